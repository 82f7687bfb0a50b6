"""Moving rows between token order (T, D) and the expert-grouped buffer (S, D).

Three kernels, each the other's backward, all driven by ``row_TK`` (-1 = no row):

- ``scatter_rows``: ``out[row[t, k]] = w[t, k] · src[t]`` (the permute; unweighted when ``w`` is
  None). Every row has one source, so no atomics are needed.
- ``gather_sum``: ``out[t] = Σ_k w[t, k] · src[row[t, k]]`` (the combine). Each token sums its K
  rows in slot order in one program, so the result is deterministic, bit for bit, on every run:
  this gather form is the deterministic mode, and the only one offered.
- ``row_dot``: ``out[t, k] = <a[t], src[row[t, k]]>`` (the gradient of the weights).

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots, S grouped rows, D row width.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pipeline.kernels.launch import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    acc_dtype,
    check,
    check_device,
    check_same_dtype,
    interpreting,
    pow2,
)


@triton.jit
def _scatter_rows_kernel(
    src_ptr, w_ptr, row_ptr, out_ptr, T, D, K, stride_src, stride_out,
    WEIGHTED: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    t_ok, d_ok = t < T, d < D
    x = tl.load(src_ptr + t[:, None] * stride_src + d[None, :], mask=t_ok[:, None] & d_ok[None, :])
    for k in range(K):
        row = tl.load(row_ptr + t * K + k, mask=t_ok, other=-1)
        val = x
        if WEIGHTED:
            val = x * tl.load(w_ptr + t * K + k, mask=t_ok, other=0.0)[:, None]
        dst = out_ptr + row[:, None].to(tl.int64) * stride_out + d[None, :]
        tl.store(dst, val.to(out_ptr.dtype.element_ty), mask=(row >= 0)[:, None] & d_ok[None, :])


@triton.jit
def _gather_sum_kernel(
    src_ptr, w_ptr, row_ptr, out_ptr, T, D, K, stride_src, stride_out,
    WEIGHTED: tl.constexpr, ACC: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    d = tl.program_id(1) * BD + tl.arange(0, BD)
    t_ok, d_ok = t < T, d < D
    acc = tl.zeros((BT, BD), dtype=ACC)
    for k in range(K):
        row = tl.load(row_ptr + t * K + k, mask=t_ok, other=-1)
        src = src_ptr + row[:, None].to(tl.int64) * stride_src + d[None, :]
        val = tl.load(src, mask=(row >= 0)[:, None] & d_ok[None, :], other=0.0).to(ACC)
        if WEIGHTED:
            val = val * tl.load(w_ptr + t * K + k, mask=t_ok, other=0.0).to(ACC)[:, None]
        acc += val
    dst = out_ptr + t[:, None] * stride_out + d[None, :]
    tl.store(dst, acc.to(out_ptr.dtype.element_ty), mask=t_ok[:, None] & d_ok[None, :])


@triton.jit
def _row_dot_kernel(
    a_ptr, src_ptr, row_ptr, out_ptr, T, D, K, stride_a, stride_src,
    ACC: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    t = tl.program_id(0) * BT + tl.arange(0, BT)
    t_ok = t < T
    for k in range(K):
        row = tl.load(row_ptr + t * K + k, mask=t_ok, other=-1)
        acc = tl.zeros((BT,), dtype=ACC)
        for d0 in range(0, D, BD):
            d = d0 + tl.arange(0, BD)
            d_ok = d < D
            a = tl.load(
                a_ptr + t[:, None] * stride_a + d[None, :],
                mask=t_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            src = src_ptr + row[:, None].to(tl.int64) * stride_src + d[None, :]
            b = tl.load(src, mask=(row >= 0)[:, None] & d_ok[None, :], other=0.0)
            acc += tl.sum(a.to(ACC) * b.to(ACC), axis=1)
        tl.store(out_ptr + t * K + k, acc.to(out_ptr.dtype.element_ty), mask=t_ok)


def _blocks(kernel: object, t: int, d: int) -> tuple[int, int]:
    """Interpreter: one program per 64 tokens and the full width; GPU: 32 × 128 tiles."""
    if interpreting(kernel):
        return pow2(min(t, 64), 16), pow2(d, 16)
    return 32, 128


def _check_routing(row_TK: torch.Tensor, w_TK: torch.Tensor | None, t: int) -> tuple[int, int]:
    check("row_TK", row_TK, shape=(t, None), dtypes=INDEX_DTYPES)
    if w_TK is not None:
        check("weights_TK", w_TK, shape=row_TK.shape, dtypes=FLOAT_DTYPES)
    return row_TK.shape


def scatter_rows(
    src_TD: torch.Tensor, row_TK: torch.Tensor, num_rows: int, w_TK: torch.Tensor | None = None
) -> torch.Tensor:
    """(num_rows, D) buffer with ``w[t, k] · src[t]`` at ``row[t, k]``; untargeted rows are 0."""
    check("src_TD", src_TD, shape=(None, None), dtypes=FLOAT_DTYPES)
    t, k = _check_routing(row_TK, w_TK, src_TD.shape[0])
    check_device(_scatter_rows_kernel, src_TD, row_TK, *([] if w_TK is None else [w_TK]))
    d = src_TD.shape[1]
    out_SD = src_TD.new_zeros(num_rows, d)
    if t * k == 0 or d == 0:
        return out_SD
    bt, bd = _blocks(_scatter_rows_kernel, t, d)
    _scatter_rows_kernel[(triton.cdiv(t, bt), triton.cdiv(d, bd))](
        src_TD, w_TK, row_TK.contiguous(), out_SD, t, d, k, src_TD.stride(0), out_SD.stride(0),
        WEIGHTED=w_TK is not None, BT=bt, BD=bd,
    )  # fmt: skip
    return out_SD


def gather_sum(
    src_SD: torch.Tensor, row_TK: torch.Tensor, w_TK: torch.Tensor | None = None
) -> torch.Tensor:
    """(T, D): ``Σ_k w[t, k] · src[row[t, k]]`` in slot order (deterministic)."""
    check("src_SD", src_SD, shape=(None, None), dtypes=FLOAT_DTYPES)
    t, k = _check_routing(row_TK, w_TK, row_TK.shape[0])
    check_device(_gather_sum_kernel, src_SD, row_TK, *([] if w_TK is None else [w_TK]))
    d = src_SD.shape[1]
    out_TD = src_SD.new_empty(t, d)
    if t == 0 or d == 0:
        return out_TD
    bt, bd = _blocks(_gather_sum_kernel, t, d)
    _gather_sum_kernel[(triton.cdiv(t, bt), triton.cdiv(d, bd))](
        src_SD, w_TK, row_TK.contiguous(), out_TD, t, d, k, src_SD.stride(0), out_TD.stride(0),
        WEIGHTED=w_TK is not None, ACC=acc_dtype(src_SD.dtype), BT=bt, BD=bd,
    )  # fmt: skip
    return out_TD


def row_dot(a_TD: torch.Tensor, src_SD: torch.Tensor, row_TK: torch.Tensor) -> torch.Tensor:
    """(T, K) in ``a``'s dtype: ``<a[t], src[row[t, k]]>``, 0 where the row is -1."""
    check("a_TD", a_TD, shape=(None, None), dtypes=FLOAT_DTYPES)
    check("src_SD", src_SD, shape=(None, a_TD.shape[1]), dtypes=FLOAT_DTYPES)
    check_same_dtype(a_TD=a_TD, src_SD=src_SD)
    t, k = _check_routing(row_TK, None, a_TD.shape[0])
    check_device(_row_dot_kernel, a_TD, src_SD, row_TK)
    d = a_TD.shape[1]
    out_TK = a_TD.new_zeros(t, k)
    if t * k == 0 or d == 0:
        return out_TK
    bt, bd = _blocks(_row_dot_kernel, t, d)
    _row_dot_kernel[(triton.cdiv(t, bt),)](
        a_TD, src_SD, row_TK.contiguous(), out_TK, t, d, k, a_TD.stride(0), src_SD.stride(0),
        ACC=acc_dtype(a_TD.dtype), BT=bt, BD=bd,
    )  # fmt: skip
    return out_TK
