"""The benchmarks' statistics (``bench/timing.py``) and the matmul-peak probe's stopping rule
(``pipeline/train/metrics.py``), on scripted numbers: nothing here is timed."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import itertools
import os
import sys
from pathlib import Path

import pytest
import torch

from pipeline.train import metrics

_SPEC = importlib.util.spec_from_file_location(
    "bench_timing", Path(__file__).resolve().parents[1] / "bench" / "timing.py"
)
timing = importlib.util.module_from_spec(_SPEC)
sys.modules["bench_timing"] = timing
_SPEC.loader.exec_module(timing)


def test_quartiles_of_seven_are_the_second_and_sixth_smallest():
    assert timing.quartiles([7.0, 1.0, 6.0, 2.0, 5.0, 3.0, 4.0]) == (2.0, 4.0, 6.0)


def test_quartiles_of_two_stay_within_the_data():
    q1, median, q3 = timing.quartiles([1.0, 3.0])
    assert 1.0 <= q1 <= median == 2.0 <= q3 <= 3.0


def test_spread_reports_median_minimum_and_iqr():
    s = timing.spread([10.0, 12.0, 11.0, 30.0, 9.0, 11.0, 13.0])
    assert (s.median, s.minimum, s.reps) == (11.0, 9.0, 7)
    assert s.iqr == pytest.approx(13.0 - 10.0)  # 6th smallest minus 2nd smallest


def test_ratio_is_taken_rotation_by_rotation_not_of_the_medians():
    # The machine slows down in rotations 4-7 for both calls alike: paired, `fast` is always
    # exactly 2x faster.
    slow = [2.0, 2.0, 2.0, 20.0, 20.0, 20.0, 20.0]
    fast = [1.0, 1.0, 1.0, 10.0, 10.0, 10.0, 10.0]
    assert timing.ratio(slow, fast) == (2.0, 2.0)
    # One rotation where the slow spell hit `fast` late: pairs still say 2x, medians 20x.
    skewed_fast = [1.0, 1.0, 1.0, 1.0, 10.0, 10.0, 10.0]
    assert timing.ratio(slow, skewed_fast) == (2.0, 2.0)
    assert timing.spread(slow).median / timing.spread(skewed_fast).median == 20.0


def test_ratio_lower_quartile_sees_the_bad_rotations():
    slow = [1.5] * 7
    fast = [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.5]  # two rotations where `fast` was no faster
    median, lower = timing.ratio(slow, fast)
    assert median == 1.5 and lower == 1.0


def test_a_target_needs_the_median_and_the_lower_quartile():
    assert timing.meets((1.6, 1.5), 1.5)
    assert not timing.meets((1.9, 1.3), 1.5)  # the E64k8I128 case: median alone lies
    assert not timing.meets((1.4, 1.45), 1.5)


def test_the_verdict_line_names_the_ratio_its_quartile_and_the_target():
    assert timing.against((1.93, 1.25), 1.5) == "1.93x [1.25x] (target >= 1.5: NOT met)"
    assert timing.against((1.6, 1.5), 1.5) == "1.60x [1.50x] (target >= 1.5: met)"


def test_rotation_runs_every_call_once_per_rotation_and_times_only_after_warmups():
    order: list[str] = []
    calls = {name: (lambda n=name: order.append(n)) for name in "ABC"}
    times = timing.rotation(calls, reps=7, warmups=2)
    assert order == list("ABC") * 9
    assert {name: len(t) for name, t in times.items()} == {"A": 7, "B": 7, "C": 7}


def test_rotation_refuses_no_repetitions():
    with pytest.raises(ValueError, match="reps >= 1"):
        timing.rotation({"A": lambda: None}, reps=0)


def test_short_runs_are_flagged_and_full_runs_are_not():
    assert timing.short_run_note(7, 2) == ""
    assert "quick look" in timing.short_run_note(3, 2)
    assert "quick look" in timing.short_run_note(7, 1)


def _bench_timing_by_its_plain_name(monkeypatch):
    """bench/timing.py imported as the benchmarks import it (``timing``, from ``bench/`` on the
    path), so a spawned worker can import what it is sent."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    monkeypatch.delitem(sys.modules, "timing", raising=False)
    return importlib.import_module("timing")


def test_a_worker_builds_once_returns_its_facts_and_runs_one_call_per_request(monkeypatch):
    plain = _bench_timing_by_its_plain_name(monkeypatch)
    # Built in the worker: a call that succeeds once (an iterator of one item), and its facts.
    build = functools.partial(tuple, [iter([None]).__next__, {"tokens_per_step": 7}])
    with plain.calls_in_processes({"once": build}, threads=1) as (calls, facts):
        assert facts == {"once": {"tokens_per_step": 7}}
        calls["once"]()  # the worker's iterator yields its one item
        with pytest.raises(RuntimeError, match="worker 'once' failed:(.|\n)*StopIteration"):
            calls["once"]()  # the second call, in the same process, finds it spent


def test_a_worker_that_fails_to_build_or_dies_is_named(monkeypatch):
    plain = _bench_timing_by_its_plain_name(monkeypatch)
    for name, build, message in [
        ("bad", functools.partial(int, "x"), "worker 'bad' failed:(.|\n)*ValueError"),
        ("gone", functools.partial(os._exit, 3), "worker 'gone' died \\(exit code 3\\)"),
    ]:
        with pytest.raises(RuntimeError, match=message):
            plain.calls_in_processes({name: build}, threads=1).__enter__()


def test_one_process_builds_here():
    build = functools.partial(tuple, [os.getpid, {"pid": os.getpid()}])
    with timing.calls_in_processes({"here": build}, threads=1, one_process=True) as (calls, facts):
        assert calls["here"]() == facts["here"]["pid"] == os.getpid()


def _scripted_probe(monkeypatch, seconds: list[float]) -> list[float]:
    """Runs the peak probe with ``_product_seconds`` returning ``seconds`` in turn (after the
    sizing products, which return 1 s so that the first size is kept); returns what was used."""
    used: list[float] = []
    script = itertools.chain([1.0, 1.0, 1.0], seconds)

    def fake(a, b, device):
        value = next(script)
        used.append(value)
        return value

    monkeypatch.setattr(metrics, "_product_seconds", fake)
    return used


def test_peak_probe_stops_when_two_medians_of_five_agree(monkeypatch):
    # First block median 0.10, second 0.20 (differ), third 0.201 (within 2 % of the second).
    seconds = [0.1] * 5 + [0.2] * 5 + [0.201] * 5 + [9.9] * 5
    used = _scripted_probe(monkeypatch, seconds)
    flops = metrics.measure_peak_flops(torch.device("cpu"), torch.float32, min_seconds=0.01)
    assert len(used) == 3 + 15  # sizing, then three blocks of five
    assert flops == pytest.approx(2 * 256**3 / 0.201)


def test_peak_probe_compares_disjoint_blocks(monkeypatch):
    # Compared at block ends only: after 13 products the last five and the five before them
    # (products 4-8: one 0.1, four 0.3) would already agree; blocks 1 and 2 do not, so the
    # probe needs a third block.
    seconds = [0.1] * 5 + [0.3] * 5 + [0.3] * 5
    used = _scripted_probe(monkeypatch, seconds)
    flops = metrics.measure_peak_flops(torch.device("cpu"), torch.float32, min_seconds=0.01)
    assert len(used) == 3 + 15
    assert flops == pytest.approx(2 * 256**3 / 0.3)


def test_peak_probe_gives_up_at_its_time_limit(monkeypatch):
    seconds = [0.1, 0.3] * 50  # never stable
    used = _scripted_probe(monkeypatch, seconds)
    metrics.measure_peak_flops(torch.device("cpu"), torch.float32, min_seconds=0.01, max_seconds=0)
    assert len(used) == 3 + 10  # two blocks are needed before the limit is looked at
