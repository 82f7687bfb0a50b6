"""The ``triton`` backend: assign rows → gathered SwiGLU grouped GEMM → GEMM → combine.

Forward, in four launches after the row assignment: the first grouped GEMM reads the token rows
through ``tok_S`` (no gathered copy of x), computes both projections ``[g | u]`` and stores
``h = silu(g)·u``; the second gives each row's expert output ``o``; the combine sums
``w · o`` per token in slot order (deterministic). The routing weight enters only in the
combine, so its gradient is ``<dy[t], o[row]>`` and the expert backward never sees it.

Backward: ``dh = do W2`` with the SwiGLU backward fused into its epilogue (gives ``[dg | du]``),
``dW2 = doᵀ h``, ``dx`` = per-token sum of ``[dg | du] [W1; W3]``, ``[dW1; dW3] = [dg | du]ᵀ x``
(x gathered again). Saved: ``h`` and ``[g | u]`` (S×3F), and the inputs.

Weights are cast to the activations' dtype, as in the reference. Legend: T tokens, K slots,
S = T·K grouped rows (an upper bound; rows past the last kept one are unused), E experts,
D model dim, F expert hidden.
"""

import torch

from pipeline.kernels import grouped_mm, rows
from pipeline.ops.triton_rows import assign_rows, gather_sum

_LIB = "moe_triton"


@torch.library.custom_op(f"{_LIB}::swiglu_experts", mutates_args=())
def swiglu_experts(
    x_TD: torch.Tensor,
    row_TK: torch.Tensor,
    tok_S: torch.Tensor,
    offs_E: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(o_SD, h_SF, gu_S2F)``: expert outputs per grouped row, and the activations saved for
    the backward (not differentiable outputs)."""
    num_rows = tok_S.shape[0]
    h_SF, gu_S2F = grouped_mm.rows_mm(
        x_TD, w13_E2FD.transpose(1, 2), offs_E, num_rows, idx_S=tok_S,
        epilogue=grouped_mm.SWIGLU_FWD,
    )  # fmt: skip
    o_SD = grouped_mm.rows_mm(h_SF, w2_EDF.transpose(1, 2), offs_E, num_rows)
    return o_SD, h_SF, gu_S2F


@swiglu_experts.register_fake
def _(x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF):
    s, f = tok_S.shape[0], w2_EDF.shape[2]
    return x_TD.new_empty(s, x_TD.shape[1]), x_TD.new_empty(s, f), x_TD.new_empty(s, 2 * f)


@torch.library.custom_op(f"{_LIB}::swiglu_experts_backward", mutates_args=())
def swiglu_experts_backward(
    do_SD: torch.Tensor,
    x_TD: torch.Tensor,
    row_TK: torch.Tensor,
    tok_S: torch.Tensor,
    offs_E: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
    h_SF: torch.Tensor,
    gu_S2F: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dx_TD, dw13_E2FD, dw2_EDF)``."""
    num_rows = tok_S.shape[0]
    dgu_S2F = grouped_mm.rows_mm(
        do_SD, w2_EDF, offs_E, num_rows, epilogue=grouped_mm.SWIGLU_BWD, gu_S2N=gu_S2F
    )
    dw2_EDF = grouped_mm.wgrad_mm(do_SD, h_SF, offs_E)
    dxs_SD = grouped_mm.rows_mm(dgu_S2F, w13_E2FD, offs_E, num_rows)
    dx_TD = rows.gather_sum(dxs_SD, row_TK)
    dw13_E2FD = grouped_mm.wgrad_mm(dgu_S2F, x_TD, offs_E, idx_S=tok_S)
    return dx_TD, dw13_E2FD, dw2_EDF


@swiglu_experts_backward.register_fake
def _(do_SD, x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF, h_SF, gu_S2F):
    return torch.empty_like(x_TD), torch.empty_like(w13_E2FD), torch.empty_like(w2_EDF)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, do_SD, _dh, _dgu):
    x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF, h_SF, gu_S2F = ctx.saved_tensors
    dx_TD, dw13_E2FD, dw2_EDF = swiglu_experts_backward(
        do_SD.contiguous(), x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF, h_SF, gu_S2F
    )
    return dx_TD, None, None, None, dw13_E2FD, dw2_EDF


swiglu_experts.register_autograd(_backward, setup_context=_save)


def triton_experts(
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    ids_TK: torch.Tensor,
    w1_EFD: torch.Tensor,
    w3_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """Routed SwiGLU experts; the contract of :func:`pipeline.ops.reference.reference_experts`."""
    dt = x_TD.dtype
    row_TK, tok_S, offs_E, _ = assign_rows(ids_TK, w1_EFD.shape[0], -1)
    w13_E2FD = torch.cat([w1_EFD, w3_EFD], dim=1).to(dt)  # one operand for both projections
    o_SD, _, _ = swiglu_experts(x_TD.contiguous(), row_TK, tok_S, offs_E, w13_E2FD, w2_EDF.to(dt))
    return gather_sum(o_SD, row_TK, weights_TK.to(dt))
