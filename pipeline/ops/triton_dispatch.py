"""The ``triton`` backend's dispatch and combine as ``torch.library`` custom ops over the row
kernels of :mod:`pipeline.kernels.row_assignment` and :mod:`pipeline.kernels.rows`.

Custom ops (with fake implementations: every output shape follows from the input shapes, with
``S = T·K`` grouped rows as an upper bound, so nothing reads counts back to the host) are opaque
to ``torch.compile``, which traces around them, and carry their own backward:

- ``group_by_expert(ids, E)``: the row of each (token, slot) in the expert-grouped buffer, the
  token of each row and the groups' end rows (kernel ``assign_rows``); integer outputs, no
  gradient. The experts gather the token rows through ``tok_S`` as they load them.
- ``combine(o, row, w)``: ``y[t] = Σ_k w[t, k] · o[row[t, k]]``, deterministic (kernel
  ``gather_sum``). Its backward is a ``spread`` and a ``routing_weight_grad``.
- ``spread(x, row, S, w)``: the combine's transpose, ``out[row[t, k]] = w[t, k] · x[t]``
  (kernel ``scatter_rows``). Its backward is a ``combine`` and a ``routing_weight_grad``.
- ``routing_weight_grad(a, src, row)``: ``<a[t], src[row[t, k]]>`` (kernel ``row_dot``).

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots, S grouped rows, D row width, E experts.
"""

import torch

from pipeline.kernels import row_assignment, rows

_LIB = "moe_triton"


@torch.library.custom_op(f"{_LIB}::group_by_expert", mutates_args=())
def group_by_expert(
    ids_TK: torch.Tensor, num_experts: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row_TK, tok_S, offs_E)`` (int32; see :class:`~pipeline.kernels.row_assignment.RowAssignment`)."""
    out = row_assignment.assign_rows(ids_TK, num_experts)
    return out.row_TK, out.tok_S, out.offs_E


@group_by_expert.register_fake
def _(ids_TK, num_experts):
    t, k = ids_TK.shape
    i32 = {"dtype": torch.int32}
    return (
        ids_TK.new_empty(t, k, **i32),
        ids_TK.new_empty(t * k, **i32),
        ids_TK.new_empty(num_experts, **i32),
    )


@torch.library.custom_op(f"{_LIB}::spread", mutates_args=())
def spread(
    src_TD: torch.Tensor, row_TK: torch.Tensor, num_rows: int, weights_TK: torch.Tensor | None
) -> torch.Tensor:
    return rows.scatter_rows(src_TD, row_TK, num_rows, weights_TK)


@spread.register_fake
def _(src_TD, row_TK, num_rows, weights_TK):
    return src_TD.new_empty(num_rows, src_TD.shape[1])


@torch.library.custom_op(f"{_LIB}::combine", mutates_args=())
def combine(
    src_SD: torch.Tensor, row_TK: torch.Tensor, weights_TK: torch.Tensor | None
) -> torch.Tensor:
    return rows.gather_sum(src_SD, row_TK, weights_TK)


@combine.register_fake
def _(src_SD, row_TK, weights_TK):
    return src_SD.new_empty(row_TK.shape[0], src_SD.shape[1])


@torch.library.custom_op(f"{_LIB}::routing_weight_grad", mutates_args=())
def routing_weight_grad(
    a_TD: torch.Tensor, src_SD: torch.Tensor, row_TK: torch.Tensor
) -> torch.Tensor:
    """``<a[t], src[row[t, k]]>``: the routing-weight gradient of both ops above."""
    return rows.row_dot(a_TD, src_SD, row_TK)


@routing_weight_grad.register_fake
def _(a_TD, src_SD, row_TK):
    return a_TD.new_empty(row_TK.shape)


def _save_rows(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], inputs[-1])


def _weight_grad(ctx, weights, dense_TD, grouped_SD, row_TK):
    if weights is None or not ctx.needs_input_grad[-1]:
        return None
    return routing_weight_grad(dense_TD, grouped_SD.contiguous(), row_TK).to(weights.dtype)


def _spread_backward(ctx, grad_SD):
    src_TD, row_TK, weights_TK = ctx.saved_tensors
    grad_SD = grad_SD.contiguous()
    d_src = combine(grad_SD, row_TK, weights_TK) if ctx.needs_input_grad[0] else None
    return d_src, None, None, _weight_grad(ctx, weights_TK, src_TD, grad_SD, row_TK)


def _combine_backward(ctx, grad_TD):
    src_SD, row_TK, weights_TK = ctx.saved_tensors
    grad_TD = grad_TD.contiguous()
    d_src = None
    if ctx.needs_input_grad[0]:
        d_src = spread(grad_TD, row_TK, src_SD.shape[0], weights_TK)
    return d_src, None, _weight_grad(ctx, weights_TK, grad_TD, src_SD, row_TK)


spread.register_autograd(_spread_backward, setup_context=_save_rows)
combine.register_autograd(_combine_backward, setup_context=_save_rows)
