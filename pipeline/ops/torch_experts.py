"""The ``torch`` backend's experts: SwiGLU over expert-grouped rows as grouped GEMMs.

One autograd node (gather → grouped SwiGLU), so the backward chooses its own GEMM layouts and
keeps only what it needs:

- the token rows are gathered by ``tok_S`` inside the node, and the gather's backward (an
  ``index_add`` of the row gradients) runs inside its backward;
- ``h = silu(x W1ᵀ) * (x W3ᵀ) * w`` and ``o = h W2ᵀ`` as grouped GEMMs over the groups (``W1`` and
  ``W3`` stacked into one ``(E, 2F, D)`` operand, so one GEMM computes both projections forward,
  and one computes their input gradient backward);
- the routing weight ``w`` scales the hidden rows (S×F) rather than the outputs (S×D), which is
  cheaper for fine-grained experts (F < D) and identical in exact arithmetic; the combine
  (:mod:`pipeline.ops.torch_dispatch`) then only sums rows.

Shapes (``docs/ARCHITECTURE.md``): T tokens, S grouped rows, E experts, D model dim, F expert
hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.ops.torch_gemm import gemm_dtype, grouped_mm


def swiglu_experts(
    x_TD: torch.Tensor,
    tok_S: torch.Tensor,
    offs_E: torch.Tensor,
    weight_S: torch.Tensor | None,
    w1_EFD: torch.Tensor,
    w3_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """``o[s] = weight[s] · SwiGLU_e(x[tok[s]])`` for the rows ``s`` of each expert ``e``'s group
    (no weight when ``weight_S`` is None), in the GEMM dtype (:func:`gemm_dtype`)."""
    return _GroupedSwiGLU.apply(x_TD, weight_S, tok_S, offs_E, w1_EFD, w3_EFD, w2_EDF)


# On a CPU, when the pre-activations [g | u] (S×2F) far exceed the last-level cache, the
# SwiGLU elementwise passes over them run at DRAM speed; running the experts one by one, each
# GEMM followed at once by its elementwise work on a cache-sized group, avoids that. Measured on
# a 2-core EPYC (fp32, T=4096, D=512, the two paths alternating in one process): E=8, F=1024
# ([g | u] 64 MiB, 1024 rows per expert) 571 vs 625 ms per layer forward+backward; E=64, F=128
# (32 MiB, 512 rows) 448 vs 424 ms; the default model (E=8, F=256, D=256, 16 MiB) trains at
# 0.77x a dense model's tokens/s expert by expert, 0.91x grouped. Hence both thresholds.
CPU_PER_GROUP_MIN_BYTES = 48 * 2**20  # of the [g | u] buffer
CPU_PER_GROUP_MIN_ROWS = 256  # mean rows per expert: smaller GEMMs lose more than cache gains


class _GroupedSwiGLU(torch.autograd.Function):
    """Gather → grouped SwiGLU (weighted hidden rows), with a hand-written backward.

    Saved for backward: the gathered rows ``xs`` (S×D), the stacked pre-activations ``[g | u]``
    (S×2F), ``silu(g)`` and the activation ``a = silu(g)·u`` (S×F each): keeping the last two
    costs 2·S·F floats and saves the backward two elementwise passes over S×F.

    The rows are processed either all at once through grouped GEMMs, or group by group
    (:func:`_per_group`, large CPU groups): the arithmetic is the same functions either way.
    """

    @staticmethod
    def forward(ctx, x_TD, w_S, tok_S, offs_E, w1_EFD, w3_EFD, w2_EDF):
        dt = gemm_dtype(x_TD.dtype, x_TD.device)
        w13_E2FD = torch.cat([w1_EFD, w3_EFD], dim=1).to(dt)  # one GEMM for both projections
        w2 = w2_EDF.to(dt)
        xs_SD = x_TD.to(dt).index_select(0, tok_S)
        ws_S1 = None if w_S is None else w_S.to(dt).unsqueeze(1)
        groups = _per_group(xs_SD, offs_E, w2.shape[-1])
        if groups is None:
            saved, o_SD = _swiglu_forward(xs_SD, ws_S1, w13_E2FD, w2, _grouped(offs_E))
        else:
            parts = [
                _swiglu_forward(
                    xs_SD[lo:hi], _rows(ws_S1, lo, hi), w13_E2FD[e : e + 1], w2[e : e + 1], _single
                )
                for e, lo, hi in groups
            ]
            saved = [torch.cat(tensors) for tensors in zip(*(p[0] for p in parts), strict=True)]
            o_SD = torch.cat([p[1] for p in parts])
        ctx.save_for_backward(xs_SD, ws_S1, *saved, tok_S, offs_E, w13_E2FD, w2)
        weight_dtype = None if w_S is None else w_S.dtype
        ctx.dtypes = (x_TD.dtype, weight_dtype, w1_EFD.dtype, w3_EFD.dtype, w2_EDF.dtype)
        ctx.num_tokens = x_TD.shape[0]
        return o_SD

    @staticmethod
    def backward(ctx, do_SD):
        xs_SD, ws_S1, gu_S2F, silu_SF, a_SF, tok_S, offs_E, w13_E2FD, w2 = ctx.saved_tensors
        dx_dtype, dw_dtype, dw1_dtype, dw3_dtype, dw2_dtype = ctx.dtypes
        # grouped_mm needs a contiguous gradient (a stride-0 one, from a sum, is not).
        do_SD = do_SD.contiguous()
        rows = (do_SD, xs_SD, ws_S1, gu_S2F, silu_SF, a_SF)
        groups = _per_group(xs_SD, offs_E, w2.shape[-1])
        if groups is None:
            dxs_SD, dws_S, dw13, dw2 = _swiglu_backward(*rows, w13_E2FD, w2, _grouped(offs_E))
        else:
            dw13, dw2 = torch.zeros_like(w13_E2FD), torch.zeros_like(w2)  # empty groups: zero
            parts = []
            for e, lo, hi in groups:
                dxs, dws, dw13[e], dw2[e] = _swiglu_backward(
                    *(_rows(t, lo, hi) for t in rows), w13_E2FD[e : e + 1], w2[e : e + 1], _single
                )
                parts.append((dxs, dws))
            dxs_SD = torch.cat([dxs for dxs, _ in parts])
            dws_S = None if ws_S1 is None else torch.cat([dws for _, dws in parts])
        dx_TD = dxs_SD.new_zeros(ctx.num_tokens, dxs_SD.shape[1]).index_add_(0, tok_S, dxs_SD)
        dw1, dw3 = dw13.chunk(2, dim=1)
        return (
            _cast(dx_TD, dx_dtype),
            _cast(dws_S, dw_dtype),
            None,
            None,
            _cast(dw1, dw1_dtype),
            _cast(dw3, dw3_dtype),
            _cast(dw2, dw2_dtype),
        )


def _per_group(
    xs_SD: torch.Tensor, offs_E: torch.Tensor, hidden: int
) -> list[tuple[int, int, int]] | None:
    """``(expert, first row, end row)`` of the non-empty groups when they should run one by one
    (see ``CPU_PER_GROUP_MIN_BYTES``; ``hidden`` is F), else None."""
    rows = xs_SD.shape[0]
    gu_bytes = rows * 2 * hidden * xs_SD.element_size()
    small = rows < CPU_PER_GROUP_MIN_ROWS * offs_E.numel() or gu_bytes < CPU_PER_GROUP_MIN_BYTES
    if xs_SD.device.type != "cpu" or small:
        return None
    ends = offs_E.tolist()
    bounds = enumerate(zip([0, *ends[:-1]], ends, strict=True))
    return [(e, lo, hi) for e, (lo, hi) in bounds if hi > lo] or None


def _rows(t: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if t is None else t[lo:hi]


def _grouped(offs_E: torch.Tensor):
    """Products over all groups at once: ``(S, Z) x (E, Z, N)`` and ``(Z, S) x (S, N)``."""
    return (lambda a, b: grouped_mm(a, b, offs_E)), (lambda a, b: grouped_mm(a.t(), b, offs_E))


# Products for one group: its rows times the single expert matrix ``b[0]``, and the weight
# gradient ``aᵀ b`` shaped (1, Z, N) like the grouped one.
_single = (lambda a, b: a @ b[0]), (lambda a, b: (a.t() @ b).unsqueeze(0))


def _swiglu_forward(xs_SD, ws_S1, w13_E2FD, w2_EDF, products):
    """``(saved tensors, o_SD)`` of ``o = (silu(x W1ᵀ) · x W3ᵀ · w) W2ᵀ`` for these rows."""
    mm, _ = products
    gu_S2F = mm(xs_SD, w13_E2FD.transpose(1, 2))
    g_SF, u_SF = gu_S2F.chunk(2, dim=1)
    silu_SF = F.silu(g_SF)
    a_SF = silu_SF * u_SF  # the activation before the routing weight
    o_SD = mm(_weighted(a_SF, ws_S1), w2_EDF.transpose(1, 2))
    return (gu_S2F, silu_SF, a_SF), o_SD


def _swiglu_backward(do_SD, xs_SD, ws_S1, gu_S2F, silu_SF, a_SF, w13_E2FD, w2_EDF, products):
    """``(dxs, dw_S, dW13, dW2)`` for these rows, from the output gradient ``do`` of each row
    (``dw_S`` None when the rows carry no weight)."""
    mm, mm_t = products
    g_SF, u_SF = gu_S2F.chunk(2, dim=1)
    dh_SF = mm(do_SD, w2_EDF)  # d(a·w)
    dws_S = None if ws_S1 is None else (dh_SF * a_SF).sum(1)
    dw2 = mm_t(do_SD, _weighted(a_SF, ws_S1))
    da_SF = dh_SF if ws_S1 is None else dh_SF.mul_(ws_S1)
    dgu_S2F = torch.empty_like(gu_S2F)  # [dg | du], the gradient of both projections
    dg_SF, du_SF = dgu_S2F.chunk(2, dim=1)
    torch.mul(da_SF, silu_SF, out=du_SF)
    torch.ops.aten.silu_backward.grad_input(da_SF.mul_(u_SF), g_SF, grad_input=dg_SF)
    return mm(dgu_S2F, w13_E2FD), dws_S, mm_t(dgu_S2F, xs_SD), dw2


def _weighted(a_SF: torch.Tensor, ws_S1: torch.Tensor | None) -> torch.Tensor:
    return a_SF if ws_S1 is None else a_SF * ws_S1


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)
