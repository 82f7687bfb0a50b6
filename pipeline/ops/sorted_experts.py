"""The ``torch`` backend: sort assignments by expert, grouped-GEMM SwiGLU experts, scatter back.

Steps (one autograd node, so the backward chooses its own GEMM layouts and keeps only what it
needs):

1. dispatch: stable-sort the (token, slot) assignments by expert id, drop empty slots (id -1),
   histogram + prefix sum give each expert's row range (``offs_E``);
2. experts: ``h = silu(x W1ᵀ) * (x W3ᵀ) * w`` and ``o = h W2ᵀ`` as grouped GEMMs over the groups
   (``W1`` and ``W3`` stacked into one ``(E, 2F, D)`` operand, so one GEMM computes both
   projections forward, and one computes their input gradient backward);
   the routing weight ``w`` scales the hidden rows (S×F) rather than the outputs (S×D), which is
   cheaper for fine-grained experts (F < D) and identical in exact arithmetic;
3. combine: ``index_add`` of the rows back onto their tokens.

Legend: T tokens, K slots per token, S kept assignments, E experts, D model dim, F expert hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.ops.grouped_gemm import gemm_dtype, grouped_mm


def sorted_experts(
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    ids_TK: torch.Tensor,
    w1_EFD: torch.Tensor,
    w3_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """Routed SwiGLU experts; the same contract as :func:`pipeline.ops.reference.reference_experts`."""
    order_S, offs_E = _sort_assignments(ids_TK, w1_EFD.shape[0])
    tok_S = order_S // ids_TK.shape[1]
    w_S = weights_TK.reshape(-1)[order_S]
    return _GroupedSwiGLU.apply(x_TD, w_S, tok_S, offs_E, w1_EFD, w3_EFD, w2_EDF)


@torch.no_grad()
def _sort_assignments(ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat slot indices ordered by expert (stable: token order within an expert), and group ends."""
    flat = ids_TK.reshape(-1)
    counts = torch.bincount(flat + 1, minlength=num_experts + 1)  # bin 0 counts empty slots (-1)
    order_S = torch.argsort(flat, stable=True)[int(counts[0]) :]
    offs_E = counts[1:].cumsum(0).to(torch.int32)
    return order_S, offs_E


class _GroupedSwiGLU(torch.autograd.Function):
    """Gather → grouped SwiGLU → weighted scatter-add, with a hand-written backward.

    Saved for backward: the gathered rows ``xs`` (S×D), the stacked pre-activations ``[g | u]``
    (S×2F), ``silu(g)`` and the activation ``a = silu(g)·u`` (S×F each): keeping the last two
    costs 2·S·F floats and saves the backward two elementwise passes over S×F (on a CPU the GEMMs
    already run at the matmul peak, so these passes are what is left to trim).
    """

    @staticmethod
    def forward(ctx, x_TD, w_S, tok_S, offs_E, w1_EFD, w3_EFD, w2_EDF):
        dt = gemm_dtype(x_TD.dtype, x_TD.device)
        w13_E2FD = torch.cat([w1_EFD, w3_EFD], dim=1).to(dt)  # one GEMM for both projections
        w2 = w2_EDF.to(dt)
        xs_SD = x_TD.to(dt).index_select(0, tok_S)
        ws_S1 = w_S.to(dt).unsqueeze(1)
        gu_S2F = grouped_mm(xs_SD, w13_E2FD.transpose(1, 2), offs_E)
        g_SF, u_SF = gu_S2F.chunk(2, dim=1)
        silu_SF = F.silu(g_SF)
        a_SF = silu_SF * u_SF  # the activation before the routing weight
        o_SD = grouped_mm(a_SF * ws_S1, w2.transpose(1, 2), offs_E)
        y_TD = o_SD.new_zeros(x_TD.shape).index_add_(0, tok_S, o_SD)
        ctx.save_for_backward(xs_SD, ws_S1, gu_S2F, silu_SF, a_SF, tok_S, offs_E, w13_E2FD, w2)
        ctx.dtypes = (x_TD.dtype, w_S.dtype, w1_EFD.dtype, w3_EFD.dtype, w2_EDF.dtype)
        ctx.num_tokens = x_TD.shape[0]
        return y_TD.to(x_TD.dtype)

    @staticmethod
    def backward(ctx, dy_TD):
        xs_SD, ws_S1, gu_S2F, silu_SF, a_SF, tok_S, offs_E, w13_E2FD, w2 = ctx.saved_tensors
        dx_dtype, dw_dtype, dw1_dtype, dw3_dtype, dw2_dtype = ctx.dtypes
        need_x, need_w, _, _, need_w1, need_w3, need_w2 = ctx.needs_input_grad
        g_SF, u_SF = gu_S2F.chunk(2, dim=1)
        # index_select also makes a stride-0 incoming gradient contiguous (grouped_mm needs that).
        do_SD = dy_TD.to(xs_SD.dtype).index_select(0, tok_S)
        dh_SF = grouped_mm(do_SD, w2, offs_E)  # d(a·w)
        dws_S = (dh_SF * a_SF).sum(1) if need_w else None
        dw2 = grouped_mm(do_SD.t(), a_SF * ws_S1, offs_E) if need_w2 else None
        da_SF = dh_SF.mul_(ws_S1)
        dgu_S2F = torch.empty_like(gu_S2F)  # [dg | du], the gradient of both projections
        dg_SF, du_SF = dgu_S2F.chunk(2, dim=1)
        torch.mul(da_SF, silu_SF, out=du_SF)
        torch.ops.aten.silu_backward.grad_input(da_SF.mul_(u_SF), g_SF, grad_input=dg_SF)
        dx_TD = None
        if need_x:
            dxs_SD = grouped_mm(dgu_S2F, w13_E2FD, offs_E)
            dx_TD = dxs_SD.new_zeros(ctx.num_tokens, dxs_SD.shape[1]).index_add_(0, tok_S, dxs_SD)
        dw1 = dw3 = None
        if need_w1 or need_w3:
            dw1, dw3 = grouped_mm(dgu_S2F.t(), xs_SD, offs_E).chunk(2, dim=1)
        return (
            _cast(dx_TD, dx_dtype),
            _cast(dws_S, dw_dtype),
            None,
            None,
            _cast(dw1, dw1_dtype),
            _cast(dw3, dw3_dtype),
            _cast(dw2, dw2_dtype),
        )


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)
