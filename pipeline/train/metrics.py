"""Pure helpers for the training metrics: MFU and a measured matmul peak."""

from __future__ import annotations

import time

import torch


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices used."""
    return flops_per_token * tokens_per_s / peak_flops


def measure_peak_flops(
    device: torch.device, dtype: torch.dtype, min_seconds: float = 0.05, max_size: int = 8192
) -> float:
    """FLOP/s of a square matmul in ``dtype``: a practical peak for MFU when the params give none
    (a CPU has no datasheet number that means anything here).

    The size doubles from 256 until three products take ``min_seconds`` (or ``max_size`` is
    reached), so the cost stays bounded even where a dtype is emulated and thousands of times
    slower (bf16 on a CPU without native bf16 runs at ~1 GFLOP/s).
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm-up: allocator, kernel selection
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(3):
            torch.matmul(a, b)
        _synchronize(device)
        seconds = time.perf_counter() - start
        if seconds >= min_seconds or size >= max_size:
            return 3 * 2 * size**3 / seconds
        size *= 2


def slow_cpu_bf16(device: torch.device) -> tuple[float, float] | None:
    """``(bf16, fp32)`` matmul FLOP/s when bf16 is the slower of the two on this CPU (no native
    bf16: neither AVX512-BF16 nor AMX), else None. bf16-mixed is then a slowdown, not a gain."""
    if device.type != "cpu":
        return None
    bf16 = measure_peak_flops(device, torch.bfloat16)
    fp32 = measure_peak_flops(device, torch.float32)
    return (bf16, fp32) if bf16 < fp32 else None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
