"""Grouped GEMMs over expert-contiguous rows, with gather and SwiGLU fused in.

Rows ``offs[e-1]:offs[e]`` of the grouped buffer belong to expert e (see
:mod:`pipeline.kernels.row_assignment`). Two kernels:

- ``_rows_mm_kernel``: ``C[rows of e] = A[rows of e] @ B[e]`` (forward and input gradients).
  Programs are laid out over a tile schedule (each expert's rows cut into BLOCK_ROWS-row tiles),
  so a program never straddles two experts and the grid size (``S/BLOCK_ROWS + E`` tiles at most) is known
  without reading the counts back to the host. With ``GATHER``, row r of A is read from
  ``A[idx[r]]``: the token rows are gathered while loading, never copied into a buffer.
  Epilogues: ``PLAIN`` stores C; ``SWIGLU_FWD`` computes ``g`` and ``u`` (the two halves of B's
  columns) in one pass, stores ``[g | u]`` for the backward and ``h = silu(g)·u`` as C;
  ``SWIGLU_BWD`` treats the product as ``dh`` and stores ``[dg | du]``.
- ``_wgrad_mm_kernel``: ``C[e] = A[rows of e]ᵀ @ B[rows of e]`` (weight gradients), one program
  per (expert, tile); B may be gathered through ``idx`` as above. An empty group gives zeros.

Shapes (``docs/ARCHITECTURE.md``): S grouped rows, E experts, F expert hidden; the GEMM dims are
Z (contracted), N (output columns) and, in ``wgrad_mm``, Q (the first operand's columns, the
output rows). Tiles: BLOCK_ROWS × BLOCK_COLS outputs, BLOCK_INNER along the contracted dim.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pipeline.kernels.launch import (
    FLOAT_DTYPES,
    INDEX_DTYPES,
    KernelInputError,
    acc_dtype,
    check,
    check_device,
    check_same_dtype,
    interpreting,
    matmul_config,
    pow2,
)

PLAIN, SWIGLU_FWD, SWIGLU_BWD = 0, 1, 2


@triton.jit
def _dot(a, b, acc, IEEE: tl.constexpr, UPCAST: tl.constexpr):
    if UPCAST:  # bf16 under the interpreter: its bf16 tl.dot is wrong, fp32 of bf16 is exact
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    if IEEE:  # fp32/fp64 inputs: exact products, no TF32 rounding
        return tl.dot(a, b, acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _rows_mm_kernel(
    a_ptr, idx_ptr, b_ptr, c_ptr, gu_ptr, offs_ptr, tile_end_ptr, N, Z, E,
    stride_as, stride_az, stride_be, stride_bz, stride_bn, stride_cs, stride_gs,
    GATHER: tl.constexpr, EPILOGUE: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_INNER: tl.constexpr, E_PAD: tl.constexpr,
):  # fmt: skip
    tile = tl.program_id(0)
    experts = tl.arange(0, E_PAD)
    tile_end_E = tl.load(tile_end_ptr + experts, mask=experts < E, other=2**30)
    e = tl.sum((tile_end_E <= tile).to(tl.int32))
    if e >= E:  # the grid is an upper bound on the number of tiles
        return
    first_tile = tl.sum(tl.where(experts == e - 1, tile_end_E, 0))
    row_end = tl.load(offs_ptr + e)
    row_start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
    rows = row_start + (tile - first_tile) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    row_ok = rows < row_end
    src = tl.load(idx_ptr + rows, mask=row_ok, other=0) if GATHER else rows
    src = src.to(tl.int64)
    cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    col_ok = cols < N
    b_base = b_ptr + e.to(tl.int64) * stride_be + cols[None, :] * stride_bn
    acc = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=ACC)
    acc_u = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=ACC)
    for z0 in range(0, Z, BLOCK_INNER):
        zs = z0 + tl.arange(0, BLOCK_INNER)
        z_ok = zs < Z
        a = tl.load(
            a_ptr + src[:, None] * stride_as + zs[None, :] * stride_az,
            mask=row_ok[:, None] & z_ok[None, :],
            other=0.0,
        )
        b_mask = z_ok[:, None] & col_ok[None, :]
        b = tl.load(b_base + zs[:, None] * stride_bz, mask=b_mask, other=0.0)
        acc = _dot(a, b, acc, IEEE, UPCAST)
        if EPILOGUE == 1:  # the u half of B's columns
            b_u = tl.load(
                b_base + (zs[:, None] * stride_bz + N * stride_bn), mask=b_mask, other=0.0
            )
            acc_u = _dot(a, b_u, acc_u, IEEE, UPCAST)
    mask = row_ok[:, None] & col_ok[None, :]
    c_at = c_ptr + rows[:, None].to(tl.int64) * stride_cs + cols[None, :]
    if EPILOGUE == 0:
        tl.store(c_at, acc.to(c_ptr.dtype.element_ty), mask=mask)
    elif EPILOGUE == 1:
        gu_at = gu_ptr + rows[:, None].to(tl.int64) * stride_gs + cols[None, :]
        tl.store(gu_at, acc.to(gu_ptr.dtype.element_ty), mask=mask)
        tl.store(gu_at + N, acc_u.to(gu_ptr.dtype.element_ty), mask=mask)
        h = acc * tl.sigmoid(acc) * acc_u
        tl.store(c_at, h.to(c_ptr.dtype.element_ty), mask=mask)
    else:  # acc = dh; C is [dg | du]
        gu_at = gu_ptr + rows[:, None].to(tl.int64) * stride_gs + cols[None, :]
        g = tl.load(gu_at, mask=mask, other=0.0).to(ACC)
        u = tl.load(gu_at + N, mask=mask, other=0.0).to(ACC)
        sig = tl.sigmoid(g)
        tl.store(c_at + N, (acc * g * sig).to(c_ptr.dtype.element_ty), mask=mask)
        dsilu = sig * (1.0 + g * (1.0 - sig))
        tl.store(c_at, (acc * u * dsilu).to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _wgrad_mm_kernel(
    a_ptr, b_ptr, idx_ptr, offs_ptr, c_ptr, Q, N,
    stride_as, stride_aq, stride_bs, stride_bn, stride_ce, stride_cq,
    GATHER: tl.constexpr, IEEE: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr, BLOCK_INNER: tl.constexpr,
):  # fmt: skip
    e = tl.program_id(0)
    idx_q = tl.program_id(1) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
    ns = tl.program_id(2) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
    q_ok, n_ok = idx_q < Q, ns < N
    row_end = tl.load(offs_ptr + e)
    row_start = tl.load(offs_ptr + e - 1, mask=e > 0, other=0)
    acc = tl.zeros((BLOCK_ROWS, BLOCK_COLS), dtype=ACC)
    for s0 in range(row_start, row_end, BLOCK_INNER):
        ss = s0 + tl.arange(0, BLOCK_INNER)
        s_ok = ss < row_end
        a_t = tl.load(
            a_ptr + ss[None, :].to(tl.int64) * stride_as + idx_q[:, None] * stride_aq,
            mask=q_ok[:, None] & s_ok[None, :],
            other=0.0,
        )
        src = tl.load(idx_ptr + ss, mask=s_ok, other=0) if GATHER else ss
        b = tl.load(
            b_ptr + src[:, None].to(tl.int64) * stride_bs + ns[None, :] * stride_bn,
            mask=s_ok[:, None] & n_ok[None, :],
            other=0.0,
        )
        acc = _dot(a_t, b, acc, IEEE, UPCAST)
    c_at = c_ptr + e.to(tl.int64) * stride_ce + idx_q[:, None] * stride_cq + ns[None, :]
    tl.store(c_at, acc.to(c_ptr.dtype.element_ty), mask=q_ok[:, None] & n_ok[None, :])


def _precision(kernel: object, dtype: torch.dtype) -> dict:
    wide = dtype in (torch.float32, torch.float64)
    upcast = interpreting(kernel) and dtype in (torch.bfloat16, torch.float16)
    return {"IEEE": wide or upcast, "UPCAST": upcast, "ACC": acc_dtype(dtype)}


def _check_groups(offs_E: torch.Tensor, num_experts: int, idx_S: torch.Tensor | None) -> None:
    check("offs_E", offs_E, shape=(num_experts,), dtypes=INDEX_DTYPES)
    if idx_S is not None:
        check("idx_S", idx_S, shape=(None,), dtypes=INDEX_DTYPES)


def rows_mm(
    a: torch.Tensor,
    b_EZN: torch.Tensor,
    offs_E: torch.Tensor,
    num_rows: int,
    *,
    idx_S: torch.Tensor | None = None,
    epilogue: int = PLAIN,
    gu_S2N: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``C[rows of e] = A'[rows of e] @ B[e]`` over ``num_rows`` grouped rows.

    ``A' = a[idx_S]`` with ``idx_S`` (gathered rows), else ``a``. ``b_EZN`` may be any strided
    view (a transposed weight costs nothing). Rows past ``offs_E[-1]`` are left zero.

    - ``PLAIN``: returns C (S, N).
    - ``SWIGLU_FWD``: ``b_EZN`` holds ``[W_g | W_u]`` along N (2F columns); returns
      ``(h (S, F), gu (S, 2F))``.
    - ``SWIGLU_BWD``: the product is ``dh (S, N=F)``; ``gu_S2N`` is the saved ``[g | u]``;
      returns ``[dg | du] (S, 2F)``.
    """
    check("b_EZN", b_EZN, shape=(None, None, None), dtypes=FLOAT_DTYPES, unit_stride=False)
    check("a", a, shape=(None, b_EZN.shape[1]), dtypes=FLOAT_DTYPES, unit_stride=False)
    check_same_dtype(a=a, b_EZN=b_EZN)
    num_experts, z, n = b_EZN.shape
    _check_groups(offs_E, num_experts, idx_S)
    if idx_S is None and a.shape[0] != num_rows:
        raise KernelInputError(f"a: expected {num_rows} grouped rows, got {a.shape[0]}")
    check_device(_rows_mm_kernel, a, b_EZN, offs_E, *([] if idx_S is None else [idx_S]))
    if epilogue == SWIGLU_FWD:
        if n % 2:
            raise KernelInputError(f"b_EZN: SwiGLU needs an even number of columns, got {n}")
        n //= 2
        gu = a.new_zeros(num_rows, 2 * n)
        c = a.new_zeros(num_rows, n)
    elif epilogue == SWIGLU_BWD:
        if gu_S2N is None:
            raise KernelInputError("SWIGLU_BWD needs the saved gu_S2N")
        check("gu_S2N", gu_S2N, shape=(num_rows, 2 * n), dtypes=(a.dtype,))
        gu = gu_S2N
        c = a.new_zeros(num_rows, 2 * n)
    else:
        gu = None
        c = a.new_zeros(num_rows, n)
    cfg = matmul_config(_rows_mm_kernel, "swiglu" if epilogue == SWIGLU_FWD else "rows")
    if num_rows and n:
        sizes_E = torch.diff(offs_E, prepend=offs_E.new_zeros(1))
        tile_end_E = torch.cumsum((sizes_E + cfg.block_rows - 1) // cfg.block_rows, 0).to(
            torch.int32
        )
        grid = (triton.cdiv(num_rows, cfg.block_rows) + num_experts, triton.cdiv(n, cfg.block_cols))
        _rows_mm_kernel[grid](
            a, idx_S, b_EZN, c, gu, offs_E, tile_end_E, n, z, num_experts,
            a.stride(0), a.stride(1), *b_EZN.stride(), c.stride(0),
            0 if gu is None else gu.stride(0),
            GATHER=idx_S is not None, EPILOGUE=epilogue, **_precision(_rows_mm_kernel, a.dtype),
            BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols, BLOCK_INNER=cfg.block_inner, E_PAD=pow2(num_experts, 2),
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return (c, gu) if epilogue == SWIGLU_FWD else c


def wgrad_mm(
    a_SQ: torch.Tensor,
    b: torch.Tensor,
    offs_E: torch.Tensor,
    *,
    idx_S: torch.Tensor | None = None,
) -> torch.Tensor:
    """(E, Q, N): ``a[rows of e]ᵀ @ B'[rows of e]`` with ``B' = b[idx_S]`` or ``b``."""
    check("a_SQ", a_SQ, shape=(None, None), dtypes=FLOAT_DTYPES, unit_stride=False)
    check("b", b, shape=(a_SQ.shape[0] if idx_S is None else None, None), dtypes=FLOAT_DTYPES,
          unit_stride=False)  # fmt: skip
    check_same_dtype(a_SQ=a_SQ, b=b)
    check("offs_E", offs_E, shape=(None,), dtypes=INDEX_DTYPES)
    num_experts = offs_E.shape[0]
    _check_groups(offs_E, num_experts, idx_S)
    check_device(_wgrad_mm_kernel, a_SQ, b, offs_E, *([] if idx_S is None else [idx_S]))
    q, n = a_SQ.shape[1], b.shape[1]
    c = a_SQ.new_empty(num_experts, q, n)
    cfg = matmul_config(_wgrad_mm_kernel, "wgrad")
    if c.numel():
        grid = (num_experts, triton.cdiv(q, cfg.block_rows), triton.cdiv(n, cfg.block_cols))
        _wgrad_mm_kernel[grid](
            a_SQ, b, idx_S, offs_E, c, q, n,
            a_SQ.stride(0), a_SQ.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
            GATHER=idx_S is not None, **_precision(_wgrad_mm_kernel, a_SQ.dtype),
            BLOCK_ROWS=cfg.block_rows, BLOCK_COLS=cfg.block_cols, BLOCK_INNER=cfg.block_inner,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )  # fmt: skip
    return c
