"""Permute and combine as ``torch.library`` custom ops over the Triton row kernels.

Custom ops (with fake implementations: every output shape follows from the input shapes, with
``S = T·K`` grouped rows as an upper bound, so nothing reads counts back to the host) are opaque
to ``torch.compile``, which traces around them, and carry their own backward:

- ``assign_rows(ids, E, capacity)``: row of each (token, slot) in the expert-grouped buffer
  (see :mod:`pipeline.kernels.permute`); integer outputs, no gradient.
- ``scatter_rows(x, row, S, w)``: the permute, ``out[row[t, k]] = w[t, k] · x[t]`` (``w`` None
  = a pure copy). Its backward is a ``gather_sum`` and a ``row_dot``.
- ``gather_sum(o, row, w)``: the combine, ``y[t] = Σ_k w[t, k] · o[row[t, k]]``, deterministic.
  Its backward is a ``scatter_rows`` and a ``row_dot``.

Legend: T tokens, K slots, S grouped rows, D row width, E experts.
"""

import torch

from pipeline.kernels import permute, rows

_LIB = "moe_triton"


@torch.library.custom_op(f"{_LIB}::assign_rows", mutates_args=())
def assign_rows(
    ids_TK: torch.Tensor, num_experts: int, capacity: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(row_TK, tok_S, offs_E, counts_E)``; ``capacity`` < 0 means dropless."""
    out = permute.assign_rows(ids_TK, num_experts, None if capacity < 0 else capacity)
    return out.row_TK, out.tok_S, out.offs_E, out.counts_E


@assign_rows.register_fake
def _(ids_TK, num_experts, capacity):
    t, k = ids_TK.shape
    i32 = {"dtype": torch.int32}
    return (
        ids_TK.new_empty(t, k, **i32),
        ids_TK.new_empty(t * k, **i32),
        ids_TK.new_empty(num_experts, **i32),
        ids_TK.new_empty(num_experts, **i32),
    )


@torch.library.custom_op(f"{_LIB}::scatter_rows", mutates_args=())
def scatter_rows(
    src_TD: torch.Tensor, row_TK: torch.Tensor, num_rows: int, weights_TK: torch.Tensor | None
) -> torch.Tensor:
    return rows.scatter_rows(src_TD, row_TK, num_rows, weights_TK)


@scatter_rows.register_fake
def _(src_TD, row_TK, num_rows, weights_TK):
    return src_TD.new_empty(num_rows, src_TD.shape[1])


@torch.library.custom_op(f"{_LIB}::gather_sum", mutates_args=())
def gather_sum(
    src_SD: torch.Tensor, row_TK: torch.Tensor, weights_TK: torch.Tensor | None
) -> torch.Tensor:
    return rows.gather_sum(src_SD, row_TK, weights_TK)


@gather_sum.register_fake
def _(src_SD, row_TK, weights_TK):
    return src_SD.new_empty(row_TK.shape[0], src_SD.shape[1])


@torch.library.custom_op(f"{_LIB}::row_dot", mutates_args=())
def row_dot(a_TD: torch.Tensor, src_SD: torch.Tensor, row_TK: torch.Tensor) -> torch.Tensor:
    """``<a[t], src[row[t, k]]>``: the routing-weight gradient of both ops above."""
    return rows.row_dot(a_TD, src_SD, row_TK)


@row_dot.register_fake
def _(a_TD, src_SD, row_TK):
    return a_TD.new_empty(row_TK.shape)


def _save_rows(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1], inputs[-1])


def _weight_grad(ctx, weights, dense_TD, grouped_SD, row_TK):
    if weights is None or not ctx.needs_input_grad[-1]:
        return None
    return row_dot(dense_TD, grouped_SD.contiguous(), row_TK).to(weights.dtype)


def _scatter_rows_backward(ctx, grad_SD):
    src_TD, row_TK, weights_TK = ctx.saved_tensors
    grad_SD = grad_SD.contiguous()
    d_src = gather_sum(grad_SD, row_TK, weights_TK) if ctx.needs_input_grad[0] else None
    return d_src, None, None, _weight_grad(ctx, weights_TK, src_TD, grad_SD, row_TK)


def _gather_sum_backward(ctx, grad_TD):
    src_SD, row_TK, weights_TK = ctx.saved_tensors
    grad_TD = grad_TD.contiguous()
    d_src = None
    if ctx.needs_input_grad[0]:
        d_src = scatter_rows(grad_TD, row_TK, src_SD.shape[0], weights_TK)
    return d_src, None, _weight_grad(ctx, weights_TK, grad_TD, src_SD, row_TK)


scatter_rows.register_autograd(_scatter_rows_backward, setup_context=_save_rows)
gather_sum.register_autograd(_gather_sum_backward, setup_context=_save_rows)
