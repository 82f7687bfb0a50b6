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
import multiprocessing
import statistics
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def add_process_args(p: argparse.ArgumentParser) -> None:
    """``--one-process``, for a benchmark that times its calls with :func:`calls_in_processes`."""
    p.add_argument("--one-process", action="store_true",
                   help="build and time every call in this process instead of one process "
                        "each (timing.calls_in_processes says why they get their own)")  # fmt: skip


def add_peer_memory_args(p: argparse.ArgumentParser) -> None:
    """``--same-host-memory``, for a benchmark that times our model against other libraries'."""
    p.add_argument("--same-host-memory", action="store_true",
                   help="the other libraries' processes keep freed host memory as ours do, as "
                        "the train stage sets it (default: glibc's defaults, which their "
                        "trainers leave as they are)")  # fmt: skip


def peers_keep_memory(args: argparse.Namespace) -> bool:
    """Whether the other libraries' processes keep freed host memory: when asked, and always
    with ``--one-process``, where ours sets the allocator for every model in the process."""
    return args.same_host_memory or args.one_process


# A built call: the call to time, and what its table prints of it (parameters, tokens per call).
Built = tuple[Callable[[], object], dict]


@contextmanager
def calls_in_processes(
    builders: dict[str, Callable[[], Built]], threads: int, one_process: bool = False
) -> Iterator[tuple[dict[str, Callable[[], object]], dict[str, dict]]]:
    """``(calls, facts)`` for :func:`rotation`: each builder run in a spawned process of its own
    (:class:`Worker`; ``one_process``: all run here, as the benches did before).

    Why processes: a training step of a 100 M-parameter model frees and allocates hundreds of
    MB per call, and glibc's malloc adapts to what a process frees (it keeps freed blocks up to
    the size it last saw freed from ``mmap``, and trims its heap above twice that). In one
    process, each model's frees set that state for the next model in the rotation, which then
    page-faults memory back in: at the mid-size shape, transformers' step took 6.2-6.8 s in
    rotation with ours in one process and 5.2-5.5 s run alone (bench/RESULTS.md). A trainer
    runs one model per process, which is what a worker is."""
    if one_process:
        built = {name: build() for name, build in builders.items()}
        yield {n: b[0] for n, b in built.items()}, {n: b[1] for n, b in built.items()}
        return
    workers: dict[str, Worker] = {}
    try:
        for name, build in builders.items():  # one at a time: builds do not share the cores
            workers[name] = Worker(name, build, threads)
        yield dict(workers), {name: w.facts for name, w in workers.items()}
    finally:
        for worker in workers.values():
            worker.close()


class Worker:
    """A call running in a spawned process of its own. ``build`` (picklable: a module-level
    function or a ``functools.partial`` of one) runs there once and returns a :data:`Built`;
    calling the worker runs the call there and returns when it is done (a pipe round trip, well
    under a millisecond, on top of the call). An exception there is raised here, with its
    traceback and the worker's name."""

    def __init__(self, name: str, build: Callable[[], Built], threads: int):
        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(build, threads, child), daemon=True)
        self._process.start()
        child.close()
        self.facts = self._answer()

    def __call__(self) -> None:
        self._conn.send(True)
        self._answer()

    def close(self) -> None:
        if self._process.is_alive():
            self._conn.send(False)
        self._process.join()

    def _answer(self):
        try:
            kind, value = self._conn.recv()
        except EOFError:
            self._process.join(timeout=10)  # the pipe closes before the process is reaped
            raise RuntimeError(f"benchmark worker {self.name!r} died "
                               f"(exit code {self._process.exitcode})") from None  # fmt: skip
        if kind == "error":
            raise RuntimeError(f"benchmark worker {self.name!r} failed:\n{value}")
        return value


def _serve(build: Callable[[], Built], threads: int, conn) -> None:
    """A :class:`Worker`'s process: build, then run the call each time the parent asks."""
    try:
        torch.set_num_threads(threads)
        call, facts = build()
        conn.send(("ready", facts))
        while conn.recv():
            call()
            conn.send(("done", None))
    except Exception:
        conn.send(("error", traceback.format_exc()))


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
