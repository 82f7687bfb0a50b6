"""Grouped matrix products over expert groups, and the dtype they run in.

``torch._grouped_mm`` runs one product per expert group in a single call (CPU fp32/bf16 and CUDA
bf16 in torch 2.13). It refuses operands whose non-unit strides are not multiples of 16 bytes
(e.g. fp32 with a hidden size that is not a multiple of 4) and other dtypes, so
:func:`grouped_mm` checks those conditions up front and otherwise runs a plain loop of
``torch.mm`` over the groups. Which path ran is logged once per reason, never silently.

Shapes (``docs/ARCHITECTURE.md``): S rows grouped by expert, E experts; Z the contracted, N the
output and Q the first operand's (weight-gradient) dimension. ``offs_E`` holds the cumulative
end row of each expert's group (int32), so group e is rows ``offs[e-1]:offs[e]``.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

_ALIGN_BYTES = 16  # torch._grouped_mm's requirement on every non-unit stride and base address


@functools.cache
def _log_once(message: str) -> None:
    log.info(message)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX).

    Without it, oneDNN/MKL emulate bf16 GEMMs at a few GFLOP/s (measured ~1-16 GFLOP/s on an
    AVX2-only EPYC against ~130 GFLOP/s for fp32), so computing in fp32 is several times faster.
    The probes are private torch APIs: if they vanish we assume no native support.
    """
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def gemm_dtype(dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype the expert GEMMs run in for activations of ``dtype`` on ``device``.

    Reduced precision is kept wherever the hardware multiplies it natively (GPUs, CPUs with
    AVX512-BF16/AMX). On other CPUs bf16 and fp16 are computed in fp32 and rounded back: faster
    there, and no less accurate.
    """
    if device.type != "cpu" or dtype in (torch.float32, torch.float64):
        return dtype
    if dtype == torch.bfloat16 and cpu_has_native_bf16():
        return dtype
    _log_once(f"MoE experts: {dtype} GEMMs on this CPU run in float32 (no native {dtype} matmul)")
    return torch.float32


def _aligned(t: torch.Tensor) -> bool:
    size = t.element_size()
    if t.data_ptr() % _ALIGN_BYTES:
        return False
    return all(
        stride == 1 or dim == 1 or (stride * size) % _ALIGN_BYTES == 0
        for dim, stride in zip(t.shape, t.stride(), strict=True)
    )


def _native_unsupported_reason(a: torch.Tensor, b: torch.Tensor) -> str | None:
    """Why torch._grouped_mm cannot take these operands, or None when it can."""
    if not hasattr(torch, "_grouped_mm"):
        return "this torch has no torch._grouped_mm"
    if a.device.type == "cpu" and a.dtype not in (torch.float32, torch.bfloat16):
        return f"torch._grouped_mm on CPU takes float32/bfloat16, not {a.dtype}"
    if a.device.type != "cpu" and a.dtype != torch.bfloat16:
        return f"torch._grouped_mm on {a.device.type} takes bfloat16, not {a.dtype}"
    if (b.shape[-1] * a.element_size()) % _ALIGN_BYTES or not (_aligned(a) and _aligned(b)):
        return "operand strides are not multiples of 16 bytes"
    return None


def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """Per-expert products, one group of the shared dimension S per expert.

    - ``a (S, Z)``, ``b (E, Z, N)`` -> ``(S, N)``: rows of group e times ``b[e]``.
    - ``a (Q, S)``, ``b (S, N)`` -> ``(E, Q, N)``: ``a[:, group e] @ b[group e]`` (weight
      gradients); an empty group gives zeros.
    """
    reason = _native_unsupported_reason(a, b)
    if reason is None:
        _log_once("MoE grouped GEMM: torch._grouped_mm")
        return torch._grouped_mm(a, b, offs=offs_E)
    _log_once(f"MoE grouped GEMM: loop over experts ({reason})")
    return _loop_mm(a, b, offs_E)


def _loop_mm(a: torch.Tensor, b: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
    """The same contract as :func:`grouped_mm`, one ``torch.mm`` per group."""
    ends = offs_E.tolist()
    bounds = list(zip([0, *ends[:-1]], ends, strict=True))
    if b.dim() == 3:  # (S, Z) x (E, Z, N) -> (S, N)
        out = a.new_empty(a.shape[0], b.shape[-1])
        for e, (lo, hi) in enumerate(bounds):
            torch.mm(a[lo:hi], b[e], out=out[lo:hi])
        return out
    out = a.new_empty(len(bounds), a.shape[0], b.shape[-1])  # (Q, S) x (S, N) -> (E, Q, N)
    for e, (lo, hi) in enumerate(bounds):
        torch.mm(a[:, lo:hi], b[lo:hi], out=out[e])
    return out
