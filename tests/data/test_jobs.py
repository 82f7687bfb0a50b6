"""``run_tasks``: this process works beside the spawned pool, results keep the tasks' order,
and a failure on either side is raised."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil
import pytest

from pipeline.data.jobs import run_tasks


def square_where(x: int, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return x * x, os.getpid()


def fail_in(x: int, parent: int, in_spawned: bool) -> int:
    if (os.getpid() != parent) == in_spawned:
        raise ValueError(f"task {x} failed")
    time.sleep(0.05)
    return x


def test_two_workers_are_this_process_and_one_spawned_and_keep_the_order():
    tasks = [(x, 0.05) for x in range(12)]
    results = run_tasks(square_where, tasks, workers=2)
    assert [value for value, _ in results] == [x * x for x in range(12)]
    pids = [pid for _, pid in results]
    assert len(set(pids)) == 2 and os.getpid() in pids
    # This process starts at once, the spawned one after its start-up: it does the larger part.
    assert pids.count(os.getpid()) >= len(pids) / 2


def outlive_the_pool(x: int, parent: int, done: Path) -> bool:
    """The spawned worker's task marks ``done``; this process's waits for that mark, then
    says whether the worker exits (within 10 s) while this process still works."""
    if os.getpid() != parent:
        done.touch()
        return True
    for _ in range(600):  # the worker's start-up and task: up to 30 s
        if done.exists():
            break
        time.sleep(0.05)
    for _ in range(200):
        if not spawned_workers():
            return True
        time.sleep(0.05)
    return False


def spawned_workers() -> list[psutil.Process]:
    """This process's pool workers (not multiprocessing's resource tracker, which stays)."""
    return [
        child
        for child in psutil.Process().children()
        if any("spawn_main" in part for part in child.cmdline())
    ]


def test_the_workers_exit_once_no_task_is_left_while_this_process_works(tmp_path):
    # Task 0 is this process's; the spawned worker's task 1 is the last one handed out.
    tasks = [(x, os.getpid(), tmp_path / "done") for x in range(2)]
    assert run_tasks(outlive_the_pool, tasks, workers=2) == [True, True]
    assert not spawned_workers()  # and every one was waited for


def test_one_worker_runs_everything_here():
    results = run_tasks(square_where, [(x, 0.0) for x in range(3)], workers=1)
    assert {pid for _, pid in results} == {os.getpid()}


@pytest.mark.parametrize("in_spawned", [True, False], ids=["spawned", "this-process"])
def test_a_failing_task_is_raised_from_either_side(in_spawned):
    with pytest.raises(ValueError, match="failed"):
        run_tasks(fail_in, [(x, os.getpid(), in_spawned) for x in range(8)], workers=2)


def test_with_a_per_worker_environment_every_worker_is_spawned():
    results = run_tasks(square_where, [(x, 0.0) for x in range(4)], 2, {"MOE_TEST": "1"})
    assert os.getpid() not in {pid for _, pid in results}
