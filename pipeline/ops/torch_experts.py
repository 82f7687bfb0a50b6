"""The ``torch`` backend's experts and combine: SwiGLU over expert-grouped rows, summed per token.

One autograd node (gather → SwiGLU → sum per token), so the backward chooses its own GEMM
layouts and keeps only what it needs:

- the token rows are gathered by ``tok_S`` inside the node, and the gather's backward (an
  ``index_add`` of the row gradients) runs inside its backward;
- ``h = silu(x W1ᵀ) * (x W3ᵀ) * w`` and ``o = h W2ᵀ`` per group (``W1`` and ``W3`` are the
  stacked ``w13 (E, 2F, D)`` parameter, so one GEMM computes both projections forward, and one
  computes their input gradient backward, with no copy of the weights);
- the routing weight ``w`` scales the hidden rows (S×F) rather than the outputs (S×D), which is
  cheaper for fine-grained experts (F < D) and identical in exact arithmetic;
- the output rows are summed onto their tokens inside the node (the combine, so the
  dispatcher's combine passes the result on): expert by expert, no S×D output exists.

Shapes (``docs/ARCHITECTURE.md``): T tokens, S grouped rows, E experts, D model dim, F expert
hidden.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F

from pipeline.ops.torch_dispatch import combine
from pipeline.ops.torch_gemm import gemm_dtype, grouped_mm

log = logging.getLogger(__name__)


def swiglu_experts(
    x_TD: torch.Tensor,
    tok_S: torch.Tensor,
    offs_E: torch.Tensor,
    weight_S: torch.Tensor | None,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """``y[t] = Σ weight[s] · SwiGLU_e(x[t])`` over the rows ``s`` with ``tok[s] = t`` (``e`` the
    expert whose group holds ``s``; no weight when ``weight_S`` is None): the experts and the
    combine in one op, ``(T, D)`` in the GEMM dtype (:func:`gemm_dtype`)."""
    return _RoutedSwiGLU.apply(x_TD, weight_S, tok_S, offs_E, w13_E2FD, w2_EDF)


# Two paths compute the op on a CPU. Grouped: gather all S rows (S×D), grouped GEMMs over them,
# then sum the S output rows per token. Expert by expert: each group's rows are gathered, run
# through their expert and added onto their tokens while they are in cache, so no S×D buffer
# exists in either direction (the backward gathers a group's rows again; the idea of ScatterMoE,
# arXiv:2403.08245, whose kernels read and write scattered rows directly), but a group's GEMMs
# are smaller and the Python loop costs per expert. S×D buffers of 32 MiB and more hurt most:
# glibc hands each one out fresh from the kernel (mmap) and the first touch of every page
# faults (~25 ms for 64 MiB here). Measured on a 2-core AVX-512 EPYC (this op forward+backward,
# fp32, T=4096, D=512, medians of 10 rotations of the two paths): E=64, k=8, F=128 (S×D 64 MiB)
# 349 ms grouped against 286 expert by expert; E=8, k=2, F=1024: 555 against 497; E=32, k=4,
# F=256 (32 MiB): 297 against 287. Byte thresholds tuned on one machine did not carry to a 2-core
# AVX2 machine (issue 18), so on a CPU the path is measured: the first time a direction
# (forward, backward) meets a problem (:func:`_problem`), both paths run twice, alternately, and
# the faster is kept for the process (:func:`_faster_path`). The two paths compute
# bit-identical results (the same GEMM per group, the same elementwise operations, the rows
# added onto their tokens in the same order: tests/ops/test_torch_experts.py), so the choice
# changes the speed, never the numbers. Problems below both floors here run grouped
# unmeasured: [g | u] that fits any last-level cache, or groups too small for one-by-one GEMMs
# to stand a chance.
CPU_PER_GROUP_MIN_BYTES = 8 * 2**20  # of the [g | u] buffer
CPU_PER_GROUP_MIN_ROWS = 128  # mean rows per expert
GROUPED, PER_EXPERT = "grouped", "expert by expert"
_faster: dict[tuple, str] = {}  # problem -> the path measured faster on it, in this process


class _RoutedSwiGLU(torch.autograd.Function):
    """Gather → SwiGLU (weighted hidden rows) → sum per token, with a hand-written backward.

    Saved for backward: the stacked pre-activations ``[g | u]`` (S×2F), ``silu(g)`` and the
    activation ``a = silu(g)·u`` (S×F each): keeping the last two costs 2·S·F floats and saves
    the backward two elementwise passes over S×F; and the token rows ``x`` (T×D), gathered again
    by the backward, or the gathered rows (S×D) where the grouped forward formed them anyway.
    """

    @staticmethod
    def forward(ctx, x_TD, w_S, tok_S, offs_E, w13_E2FD, w2_EDF):
        dt = gemm_dtype(x_TD.dtype, x_TD.device)
        x = x_TD.to(dt)  # the input itself when it is in the GEMM dtype: no copy
        w13 = w13_E2FD.to(dt)
        w2 = w2_EDF.to(dt)
        ws_S1 = None if w_S is None else w_S.to(dt).unsqueeze(1)
        rows, hidden = tok_S.shape[0], w2.shape[-1]

        def grouped():
            xs_SD = x.index_select(0, tok_S)
            saved, o_SD = _swiglu_forward(xs_SD, ws_S1, w13, w2, _grouped(offs_E))
            return xs_SD, saved, combine(o_SD, tok_S, x.shape[0])

        def per_expert(groups):
            # Each group writes into its rows of the saved buffers: no concatenation after.
            saved = [x.new_empty(rows, n) for n in (2 * hidden, hidden, hidden)]
            y_TD = x.new_zeros(x.shape[0], w2.shape[1])
            for e, lo, hi in groups:
                out = (*(t[lo:hi] for t in saved), None)
                _, o = _swiglu_forward(
                    x.index_select(0, tok_S[lo:hi]),
                    _rows(ws_S1, lo, hi),
                    w13[e : e + 1],
                    w2[e : e + 1],
                    _single,
                    out,
                )
                y_TD.index_add_(0, tok_S[lo:hi], o)
            return None, saved, y_TD

        xs_SD, saved, y_TD = _run("forward", x, rows, offs_E, hidden, grouped, per_expert)
        ctx.save_for_backward(x, xs_SD, ws_S1, *saved, tok_S, offs_E, w13, w2)
        weight_dtype = None if w_S is None else w_S.dtype
        ctx.dtypes = (x_TD.dtype, weight_dtype, w13_E2FD.dtype, w2_EDF.dtype)
        return y_TD

    @staticmethod
    def backward(ctx, dy_TD):
        x, xs_SD, ws_S1, gu_S2F, silu_SF, a_SF, tok_S, offs_E, w13_E2FD, w2 = ctx.saved_tensors
        dx_dtype, dw_dtype, dw13_dtype, dw2_dtype = ctx.dtypes
        # grouped_mm needs a contiguous gradient (a stride-0 one, from a sum, is not).
        dy_TD = dy_TD.contiguous()
        saved = (ws_S1, gu_S2F, silu_SF, a_SF)

        def grouped():
            xs = x.index_select(0, tok_S) if xs_SD is None else xs_SD
            dxs_SD, dws_S, dw13, dw2 = _swiglu_backward(
                dy_TD.index_select(0, tok_S), xs, *saved, w13_E2FD, w2, _grouped(offs_E)
            )
            return combine(dxs_SD, tok_S, x.shape[0]), dws_S, dw13, dw2

        def per_expert(groups):
            # Each group's row gradients go straight onto dx, in the grouped path's row order;
            # its weight gradients are written into their expert's slice, and only an expert
            # without rows is zeroed (a zero fill of every slice cost ~13 ms per step and layer
            # at mid, issue 18).
            dw13, dw2 = torch.empty_like(w13_E2FD), torch.empty_like(w2)
            for e in set(range(w2.shape[0])).difference(e for e, _, _ in groups):
                dw13[e], dw2[e] = 0, 0
            dx_TD = torch.zeros_like(x)
            dws_S = None if ws_S1 is None else ws_S1.new_empty(ws_S1.shape[0])
            for e, lo, hi in groups:
                tok = tok_S[lo:hi]
                dxs, *_ = _swiglu_backward(
                    dy_TD.index_select(0, tok),
                    x.index_select(0, tok),
                    *(_rows(t, lo, hi) for t in saved),
                    w13_E2FD[e : e + 1],
                    w2[e : e + 1],
                    _single,
                    (None, _rows(dws_S, lo, hi), dw13[e], dw2[e]),
                )
                dx_TD.index_add_(0, tok, dxs)
            return dx_TD, dws_S, dw13, dw2

        dx_TD, dws_S, dw13, dw2 = _run(
            "backward", x, tok_S.shape[0], offs_E, w2.shape[-1], grouped, per_expert
        )
        return (
            _cast(dx_TD, dx_dtype),
            _cast(dws_S, dw_dtype),
            None,
            None,
            _cast(dw13, dw13_dtype),
            _cast(dw2, dw2_dtype),
        )


def _run(direction, x_TD, rows, offs_E, hidden, grouped, per_expert):
    """``direction``'s result through the path for this problem: ``grouped()``, or
    ``per_expert(groups)`` with the ``(expert, first row, end row)`` of the non-empty groups."""
    problem = _problem(direction, x_TD, rows, offs_E, hidden)
    if problem is None:
        return grouped()
    ends = offs_E.tolist()
    bounds = enumerate(zip([0, *ends[:-1]], ends, strict=True))
    groups = [(e, lo, hi) for e, (lo, hi) in bounds if hi > lo]
    path = _faster.get(problem)
    if path is None:
        return _faster_path(problem, grouped, lambda: per_expert(groups))
    return grouped() if path == GROUPED else per_expert(groups)


def _problem(direction: str, x_TD: torch.Tensor, rows: int, offs_E: torch.Tensor, hidden: int):
    """What the path choice is cached under: direction, dtype, E, D, F and the row count S
    rounded up to a power of two (routing moves the count a little from step to step); None
    when the problem runs grouped unmeasured (not on a CPU, or below both floors above)."""
    experts = offs_E.numel()
    gu_bytes = rows * 2 * hidden * x_TD.element_size()
    small = rows < CPU_PER_GROUP_MIN_ROWS * experts or gu_bytes < CPU_PER_GROUP_MIN_BYTES
    if x_TD.device.type != "cpu" or small or rows == 0:
        return None
    return direction, x_TD.dtype, experts, x_TD.shape[1], hidden, 1 << (rows - 1).bit_length()


def _faster_path(problem: tuple, grouped, per_expert):
    """Runs both paths twice, alternately; records and logs the faster (by its better run) and
    returns a result (the last one computed: the paths' results are identical)."""
    seconds: dict[str, float] = {GROUPED: math.inf, PER_EXPERT: math.inf}
    for _ in range(2):
        for path, run in ((GROUPED, grouped), (PER_EXPERT, per_expert)):
            start = time.perf_counter()
            result = run()
            seconds[path] = min(seconds[path], time.perf_counter() - start)
    _faster[problem] = min(seconds, key=seconds.__getitem__)
    direction, dtype, experts, d, f, rows = problem
    log.info(
        "MoE experts %s on this CPU (E=%d, D=%d, F=%d, %s, <= %d rows): %s, measured "
        "%.1f ms grouped, %.1f ms expert by expert",
        direction, experts, d, f, dtype, rows, _faster[problem],
        1e3 * seconds[GROUPED], 1e3 * seconds[PER_EXPERT],
    )  # fmt: skip
    return result


def _rows(t: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor | None:
    return None if t is None else t[lo:hi]


def _grouped(offs_E: torch.Tensor):
    """Products over all groups at once: ``(S, Z) x (E, Z, N)`` and ``(Z, S) x (S, N)`` (into
    new tensors: ``out`` is always None here)."""
    return (
        lambda a, b, out=None: grouped_mm(a, b, offs_E),
        lambda a, b, out=None: grouped_mm(a.t(), b, offs_E),
    )


# Products for one group: its rows times the single expert matrix ``b[0]``, and the weight
# gradient ``aᵀ b`` (its expert's (Z, N) slice); each into ``out`` when given.
_single = (
    lambda a, b, out=None: torch.mm(a, b[0], out=out),
    lambda a, b, out=None: torch.mm(a.t(), b, out=out),
)


def _swiglu_forward(xs_SD, ws_S1, w13_E2FD, w2_EDF, products, out=None):
    """``(saved tensors, o_SD)`` of ``o = (silu(x W1ᵀ) · x W3ᵀ · w) W2ᵀ`` for these rows;
    ``out``: the buffers ``(gu, silu, a, o)`` to write them into, else new tensors."""
    mm, _ = products
    gu_out, silu_out, a_out, o_out = out or (None, None, None, None)
    gu_S2F = mm(xs_SD, w13_E2FD.transpose(1, 2), out=gu_out)
    g_SF, u_SF = gu_S2F.chunk(2, dim=1)
    silu_SF = F.silu(g_SF) if silu_out is None else torch.ops.aten.silu.out(g_SF, out=silu_out)
    a_SF = torch.mul(silu_SF, u_SF, out=a_out)  # the activation before the routing weight
    o_SD = mm(_weighted(a_SF, ws_S1), w2_EDF.transpose(1, 2), out=o_out)
    return (gu_S2F, silu_SF, a_SF), o_SD


def _swiglu_backward(
    do_SD, xs_SD, ws_S1, gu_S2F, silu_SF, a_SF, w13_E2FD, w2_EDF, products, out=(None,) * 4
):
    """``(dxs, dw_S, dW13, dW2)`` for these rows, from the output gradient ``do`` of each row
    (``dw_S`` None when the rows carry no weight); ``out``: buffers for the four."""
    mm, mm_t = products
    dxs_out, dws_out, dw13_out, dw2_out = out
    g_SF, u_SF = gu_S2F.chunk(2, dim=1)
    dh_SF = mm(do_SD, w2_EDF)  # d(a·w)
    dws_S = None if ws_S1 is None else torch.sum(dh_SF * a_SF, 1, out=dws_out)
    dw2 = mm_t(do_SD, _weighted(a_SF, ws_S1), out=dw2_out)
    da_SF = dh_SF if ws_S1 is None else dh_SF.mul_(ws_S1)
    dgu_S2F = torch.empty_like(gu_S2F)  # [dg | du], the gradient of both projections
    dg_SF, du_SF = dgu_S2F.chunk(2, dim=1)
    torch.mul(da_SF, silu_SF, out=du_SF)
    torch.ops.aten.silu_backward.grad_input(da_SF.mul_(u_SF), g_SF, grad_input=dg_SF)
    return mm(dgu_S2F, w13_E2FD, out=dxs_out), dws_S, mm_t(dgu_S2F, xs_SD, out=dw13_out), dw2


def _weighted(a_SF: torch.Tensor, ws_S1: torch.Tensor | None) -> torch.Tensor:
    return a_SF if ws_S1 is None else a_SF * ws_S1


def _cast(t: torch.Tensor | None, dtype: torch.dtype | None) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)
