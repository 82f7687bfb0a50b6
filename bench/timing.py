"""Timing helpers shared by the benchmarks: wall time of one call, calls timed in rotation, the
statistics every table reports, and the machine's matmul peak.

The statistics (issue 18): at least :data:`MIN_WARMUPS` untimed rotations and :data:`MIN_REPS`
timed ones, each rotation running every compared call once (A B C A B C ...); per call the
median, the minimum and the inter-quartile range (:func:`spread`); per pair the ratio taken
rotation by rotation, then its median and lower quartile (:func:`ratio`). A target is met only
when both clear it (:func:`meets`): the median says what is typical, the lower quartile that a
quarter of the rotations did not fall below it.

The benchmarks run as scripts (``python bench/<name>.py``), so this module is imported by its
plain name from the ``bench/`` directory.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.train.metrics import measure_peak_flops

MIN_REPS = 7
MIN_WARMUPS = 2


def parsed(doc: str, add_args: Callable, impls: tuple[str, ...]) -> argparse.Namespace:
    """A comparison benchmark's options (``add_args`` adds its own; ``--impls`` picks among
    ``impls``, all by default), with torch's thread count set from ``--threads``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    add_args(p)
    p.add_argument("--impls", nargs="+", choices=impls, default=list(impls))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    return args


def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rotation(
    calls: dict[str, Callable[[], object]],
    reps: int = MIN_REPS,
    warmups: int = MIN_WARMUPS,
    sync: Callable[[], object] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds of each call in each of ``reps`` rotations, after ``warmups`` untimed ones. A
    rotation runs every call once, in order, so a slow spell of the machine (clock changes,
    other processes) hits all of them alike. ``sync`` waits for queued device work (CUDA)."""
    if reps < 1 or warmups < 0:
        raise ValueError(f"rotation: reps >= 1 and warmups >= 0 needed, got {reps}, {warmups}")
    times: dict[str, list[float]] = {name: [] for name in calls}
    for rep in range(warmups + reps):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            if rep >= warmups:
                times[name].append(time.perf_counter() - start)
    return times


def synchronizer(device: torch.device) -> Callable[[], object]:
    """What :func:`rotation` calls around each call: waits for the queued GPU work."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def ratio(slow: list[float], fast: list[float]) -> tuple[float, float]:
    """``(median, lower quartile)`` of the per-rotation ratios ``slow / fast``: how many times
    faster ``fast`` is, and a pessimistic bound on it (a quarter of the rotations saw less)."""
    ratios = [s / f for s, f in zip(slow, fast, strict=True)]
    if len(ratios) < 2:
        return ratios[0], ratios[0]
    return statistics.median(ratios), quartiles(ratios)[0]


def meets(measured: tuple[float, float], target: float) -> bool:
    """Whether a :func:`ratio` clears ``target`` on its median and on its lower quartile."""
    return min(measured) >= target


def quartiles(values: list[float]) -> tuple[float, float, float]:
    """``(lower quartile, median, upper quartile)``; Python's default ("exclusive") method, so
    with 7 values the quartiles are the 2nd and 6th smallest. Below 3 values that method
    extrapolates beyond the data, so those take the "inclusive" one (within the data)."""
    if len(values) < 2:
        return values[0], values[0], values[0]
    method = "exclusive" if len(values) >= 3 else "inclusive"
    q1, q2, q3 = statistics.quantiles(values, n=4, method=method)
    return q1, q2, q3


@dataclass(frozen=True)
class Spread:
    """One call's timed rotations: median, minimum and inter-quartile range, in seconds."""

    median: float
    minimum: float
    iqr: float
    reps: int


def spread(times: list[float]) -> Spread:
    q1, median, q3 = quartiles(times)
    return Spread(median, min(times), q3 - q1, len(times))


def short_run_note(reps: int, warmups: int) -> str:
    """A line to print when a run has fewer rotations than a result needs (a quick look)."""
    if reps >= MIN_REPS and warmups >= MIN_WARMUPS:
        return ""
    return (f"NOTE: {reps} rotations after {warmups} warm-ups: a quick look, not a result "
            f"(results need >= {MIN_REPS} after >= {MIN_WARMUPS})")  # fmt: skip


def format_ratio(measured: tuple[float, float]) -> str:
    return f"{measured[0]:.2f}x [{measured[1]:.2f}x]"


def against(measured: tuple[float, float], target: float) -> str:
    """``1.62x [1.55x] (target >= 1.5: met)``: a :func:`ratio` and its verdict."""
    verdict = "met" if meets(measured, target) else "NOT met"
    return f"{format_ratio(measured)} (target >= {target}: {verdict})"


def matmul_peak(dtype: torch.dtype) -> float:
    """GFLOP/s of a square CPU matmul, timed until stable (see
    :func:`pipeline.train.metrics.measure_peak_flops`): about 2048³ in fp32, smaller where a
    dtype is emulated. Each product takes at least 0.1 s, so the timer's resolution and the
    call overhead are negligible."""
    return measure_peak_flops(torch.device("cpu"), dtype, min_seconds=0.3, max_size=4096) / 1e9
