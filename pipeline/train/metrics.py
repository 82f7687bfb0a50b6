"""Pure helpers for the training metrics: MFU, a GPU's datasheet peak, and a measured matmul peak."""

from __future__ import annotations

import re
import statistics
import time

import torch

# Dense bf16 tensor-core peaks per GPU, from NVIDIA's datasheets (A100 Tensor Core GPU; H100
# Tensor Core GPU; H200 Tensor Core GPU; HGX B200). The datasheets print the figure with 2:4
# structured sparsity and mark it so; the dense peak, the one MFU is measured against, is half
# of it. Each row: a pattern of ``torch.cuda.get_device_name`` (most specific first), the
# datasheet product, FLOP/s.
DATASHEET_BF16_PEAKS: tuple[tuple[str, str, float], ...] = (
    (r"\bH100 PCIe\b", "H100 PCIe", 1513e12 / 2),
    (r"\bH100 NVL\b", "H100 NVL", 1671e12 / 2),
    (r"\bH100\b", "H100 SXM", 1979e12 / 2),
    (r"\bH200 NVL\b", "H200 NVL", 1671e12 / 2),
    (r"\bH200\b", "H200 SXM", 1979e12 / 2),
    (r"\bA100\b", "A100 (SXM or PCIe)", 624e12 / 2),
    (r"\bB200\b", "HGX B200, per GPU", 36e15 / 8 / 2),
)


def mfu(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs utilisation: achieved training FLOP/s over the peak of all devices used."""
    return flops_per_token * tokens_per_s / peak_flops


def datasheet_peak_flops(device_name: str) -> tuple[float, str] | None:
    """``(dense bf16 FLOP/s, product)`` of a GPU named ``device_name`` (as
    ``torch.cuda.get_device_name`` names it) when the table above knows it, else None."""
    for pattern, product, flops in DATASHEET_BF16_PEAKS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return flops, product
    return None


def peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """``(FLOP/s, source)``, the per-device peak MFU is measured against: a known GPU's
    datasheet for bf16, else a matmul measured here (a CPU has no datasheet number that means
    anything here, nor does a bf16 figure for an fp32 run)."""
    if device.type == "cuda" and dtype == torch.bfloat16:
        name = torch.cuda.get_device_name(device)
        known = datasheet_peak_flops(name)
        if known is not None:
            return known[0], f"datasheet: NVIDIA {known[1]}, dense bf16"
    return measure_peak_flops(device, dtype), "measured"


PEAK_WINDOW = 5  # products per median
PEAK_TOLERANCE = 0.02  # stop once two successive medians of PEAK_WINDOW products agree this well


def measure_peak_flops(
    device: torch.device,
    dtype: torch.dtype,
    min_seconds: float = 0.05,
    max_size: int = 8192,
    max_seconds: float = 10.0,
) -> float:
    """FLOP/s of a square matmul in ``dtype``: a practical peak for MFU when the params give none
    (a CPU has no datasheet number that means anything here).

    The size doubles from 256 until three products take ``min_seconds`` (or ``max_size`` is
    reached), so the cost stays bounded even where a dtype is emulated and thousands of times
    slower (bf16 on a CPU without native bf16 runs at ~1 GFLOP/s). Then products are timed one
    by one, in blocks of :data:`PEAK_WINDOW`, until a block's median differs from the previous
    block's by less than :data:`PEAK_TOLERANCE` (or ``max_seconds`` have passed): a fixed handful of products on a shared machine lands anywhere in its slow
    spells, and a low peak reads as more than 100 % of it elsewhere. The rate of the last
    median is returned.
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        torch.matmul(a, b)  # warm-up: allocator, kernel selection
        if sum(_product_seconds(a, b, device) for _ in range(3)) >= min_seconds or size >= max_size:
            break
        size *= 2
    deadline = time.perf_counter() + max_seconds
    times: list[float] = []
    while True:
        times.append(_product_seconds(a, b, device))
        if len(times) < 2 * PEAK_WINDOW or len(times) % PEAK_WINDOW:
            continue  # compare whole blocks: block n's median against block n-1's
        last = statistics.median(times[-PEAK_WINDOW:])
        before = statistics.median(times[-2 * PEAK_WINDOW : -PEAK_WINDOW])
        if abs(last - before) < PEAK_TOLERANCE * before or time.perf_counter() > deadline:
            return 2 * size**3 / last


def _product_seconds(a: torch.Tensor, b: torch.Tensor, device: torch.device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    torch.matmul(a, b)
    _synchronize(device)
    return time.perf_counter() - start


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
