"""Timing helpers shared by the benchmarks: wall time of one call, and the machine's matmul peak.

The benchmarks run as scripts (``python bench/<name>.py``), so this module is imported by its
plain name from the ``bench/`` directory.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

PEAK_SIZE = 2048
PEAK_MAX_SECONDS = 20.0  # bf16 matmul can be ~1 GFLOP/s on CPUs without AVX512-BF16


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak(dtype: torch.dtype) -> float:
    """GFLOP/s of a 2048³ matmul (median of 3), or of a smaller one if 2048³ would take long."""
    n = PEAK_SIZE
    probe = seconds(lambda: torch.randn(256, 256, dtype=dtype) @ torch.randn(256, 256, dtype=dtype))
    while n > 256 and probe * (n / 256) ** 3 > PEAK_MAX_SECONDS / 4:
        n //= 2
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / statistics.median(seconds(lambda: a @ b) for _ in range(3)) / 1e9
