"""The ``triton`` backend's experts: a gathered SwiGLU grouped GEMM, then the down GEMM.

Forward, in two launches after the dispatch (:mod:`pipeline.ops.triton_dispatch`): the first
grouped GEMM reads the token rows through ``tok_S`` (no gathered copy of x), computes both
projections ``[g | u]`` and stores ``h = silu(g)·u``; the second gives each row's expert output
``o``. The routing weight enters only in the combine, so its gradient is ``<dy[t], o[row]>``
and the expert backward never sees it.

Backward: ``dh = do W2`` with the SwiGLU backward fused into its epilogue (gives ``[dg | du]``),
``dW2 = doᵀ h``, ``dx`` = per-token sum of ``[dg | du] [W1; W3]``, ``[dW1; dW3] = [dg | du]ᵀ x``
(x gathered again). Saved: ``h`` and ``[g | u]`` (S×3F), and the inputs.

Weights are cast to the activations' dtype, as in the reference (no copy when they are in it:
``w13`` is the stacked parameter, never concatenated per forward). Shapes
(``docs/ARCHITECTURE.md``): T tokens, K slots, S = T·K grouped rows (an upper bound; rows past
the last assigned one are unused), E experts, D model dim, F expert hidden.
"""

import torch

from pipeline.kernels import grouped_gemm, rows

_LIB = "moe_triton"


@torch.library.custom_op(f"{_LIB}::grouped_swiglu", mutates_args=())
def grouped_swiglu(
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
    h_SF, gu_S2F = grouped_gemm.rows_mm(
        x_TD, w13_E2FD.transpose(1, 2), offs_E, num_rows, idx_S=tok_S,
        epilogue=grouped_gemm.SWIGLU_FWD,
    )  # fmt: skip
    o_SD = grouped_gemm.rows_mm(h_SF, w2_EDF.transpose(1, 2), offs_E, num_rows)
    return o_SD, h_SF, gu_S2F


@grouped_swiglu.register_fake
def _(x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF):
    s, f = tok_S.shape[0], w2_EDF.shape[2]
    return x_TD.new_empty(s, x_TD.shape[1]), x_TD.new_empty(s, f), x_TD.new_empty(s, 2 * f)


@torch.library.custom_op(f"{_LIB}::grouped_swiglu_backward", mutates_args=())
def grouped_swiglu_backward(
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
    dgu_S2F = grouped_gemm.rows_mm(
        do_SD, w2_EDF, offs_E, num_rows, epilogue=grouped_gemm.SWIGLU_BWD, gu_S2N=gu_S2F
    )
    dw2_EDF = grouped_gemm.wgrad_mm(do_SD, h_SF, offs_E)
    dxs_SD = grouped_gemm.rows_mm(dgu_S2F, w13_E2FD, offs_E, num_rows)
    dx_TD = rows.gather_sum(dxs_SD, row_TK)
    dw13_E2FD = grouped_gemm.wgrad_mm(dgu_S2F, x_TD, offs_E, idx_S=tok_S)
    return dx_TD, dw13_E2FD, dw2_EDF


@grouped_swiglu_backward.register_fake
def _(do_SD, x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF, h_SF, gu_S2F):
    return torch.empty_like(x_TD), torch.empty_like(w13_E2FD), torch.empty_like(w2_EDF)


def _save(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _backward(ctx, do_SD, _dh, _dgu):
    x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF, h_SF, gu_S2F = ctx.saved_tensors
    dx_TD, dw13_E2FD, dw2_EDF = grouped_swiglu_backward(
        do_SD.contiguous(), x_TD, row_TK, tok_S, offs_E, w13_E2FD, w2_EDF, h_SF, gu_S2F
    )
    return dx_TD, None, None, None, dw13_E2FD, dw2_EDF


grouped_swiglu.register_autograd(_backward, setup_context=_save)


def swiglu_experts(
    x_TD: torch.Tensor,
    row_TK: torch.Tensor,
    tok_S: torch.Tensor,
    offs_E: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """``o[s] = SwiGLU_e(x[tok[s]])`` for the rows ``s`` of each expert ``e``'s group; the rows
    come from :func:`pipeline.ops.triton_dispatch.group_by_expert`."""
    dt = x_TD.dtype
    o_SD, _, _ = grouped_swiglu(
        x_TD.contiguous(), row_TK, tok_S, offs_E, w13_E2FD.to(dt), w2_EDF.to(dt)
    )
    return o_SD
