"""Shard jobs: the data stages' work as tasks that processes or machines run independently.

The conventions are datatrove's (its ``LocalPipelineExecutor`` / ``SlurmPipelineExecutor``):

* job ``I/N`` (``--shard I/N``) runs tasks ``I, I+N, I+2N, ...`` of the stage's plan
  (:func:`select`), which every job computes the same way from the params and the inputs;
* a task writes its outputs into the stage's staging directory, each file atomically, and its
  completion marker last (:func:`write_marker`): a task is done when its marker exists and names
  the same task of the same plan, so a marker left by another plan or params counts as missing;
* the merge (``--merge``) checks every marker (:func:`missing_tasks`) and only then moves the
  outputs into place (:func:`replace_dir`); a missing task stops it with the jobs to re-run.

One command (what ``dvc repro`` runs) is every task, run by :func:`run_tasks` in
``num_workers`` processes, then the same merge, so N jobs and a merge write the same bytes as it.
The tasks are pure functions of their inputs: their number and order of completion do not change
what is written.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json

T = TypeVar("T")


class JobError(PipelineError):
    """A shard job or merge was asked for something the plan does not allow."""


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``0 <= I < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise JobError(f"--shard {text!r}: expected I/N, e.g. 0/8 (job I of N, from 0)") from None
    if not 0 <= index < count:
        raise JobError(f"--shard {text!r}: expected 0 <= I < N")
    return index, count


def select(tasks: Sequence[T], shard: tuple[int, int]) -> list[T]:
    index, count = shard
    return list(tasks[index::count])


def plan_digest(plan: Any) -> str:
    """A digest of what a task depends on (params, inputs), recorded in its marker."""
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def write_marker(path: Path, task: dict, result: dict) -> None:
    """The completion marker of ``task``: written after all of the task's outputs."""
    write_json(path, {"task": task, "result": result})


def read_result(path: Path, task: dict) -> dict | None:
    """The result recorded for ``task``, or None if the task is not done under this plan."""
    if not path.is_file():
        return None
    marker = read_json(path)
    return marker["result"] if marker.get("task") == task else None


def missing_tasks(markers: Sequence[tuple[Path, dict]], stage: str) -> None:
    """Refuse to merge unless every task has its marker."""
    missing = [i for i, (path, task) in enumerate(markers) if read_result(path, task) is None]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise JobError(
            f"{stage}: {len(missing)} of {len(markers)} tasks are not done (no completion marker "
            f"for this plan in {markers[0][0].parent}): tasks {shown}. Run the shard jobs that "
            f"hold them (python -m stages.{stage} --shard I/N takes tasks I, I+N, ...), then "
            "merge again"
        )


def run_tasks(
    work: Callable[..., T],
    args: Sequence[tuple],
    workers: int,
    env: dict[str, str] | None = None,
) -> list[T]:
    """``[work(*a) for a in args]`` in ``workers`` processes: this one and ``workers - 1`` fresh
    ones (spawned, so no thread pool or open file is inherited; ``env`` is set in each).

    This process is one of the workers (unless ``env`` is given) because a spawned one first
    pays its start-up (the interpreter and the imports: a prepare worker starts its first task
    ~0.4 s after this one), which this one has already paid. Every worker takes the next task
    of the one sequence when it is free (a thread here feeds each spawned process one task at a
    time, so none holds a queue of tasks another could be doing): the work ends within one task
    of even, whatever the start-up costs. Once no task is left to hand out, the spawned workers
    exit while this process may still be working: their exit (~0.1 s) is not added to the end.
    The first failure stops the handing out of tasks and is raised."""
    if workers == 1 or len(args) <= 1:
        return [work(*a) for a in args]
    # With a per-worker ``env`` (tokenizer threads) this process, whose thread pools exist
    # already, would run with its own: then every worker is a spawned one.
    here = not env
    spawned = min(workers, len(args)) - here
    tasks = iter(range(len(args)))
    lock, failed = threading.Lock(), threading.Event()
    results: dict[int, T] = {}

    def next_task() -> int | None:
        with lock:
            return None if failed.is_set() else next(tasks, None)

    def drain(run_one: Callable[[int], T]) -> None:
        while (index := next_task()) is not None:
            try:
                results[index] = run_one(index)
            except BaseException:
                failed.set()
                raise

    pool = ProcessPoolExecutor(
        max_workers=spawned,
        mp_context=get_context("spawn"),
        initializer=_set_env,
        initargs=(env or {},),
    )
    feeding = spawned  # feeders still handing out tasks

    def feed() -> None:
        nonlocal feeding
        try:
            drain(lambda i: pool.submit(work, *args[i]).result())
        finally:
            with lock:
                feeding -= 1
                last = feeding == 0
            if last:  # no task is left to hand out: the workers exit (and are waited for
                pool.shutdown()  # here) while this process may still work on its last task

    with pool, ThreadPoolExecutor(spawned) as feeders:
        fed = [feeders.submit(feed) for _ in range(spawned)]
        try:
            if here:
                drain(lambda i: work(*args[i]))
        finally:
            wait(fed)
        for feeder in fed:
            feeder.result()  # a spawned worker's failure
    return [results[i] for i in range(len(args))]


def _set_env(env: dict[str, str]) -> None:
    os.environ.update(env)


def threads_per_worker(workers: int) -> dict[str, str]:
    """Environment that gives each of ``workers`` processes its share of this machine's cores
    for the tokenizer's threads (Rayon), unless ``RAYON_NUM_THREADS`` is set already."""
    if "RAYON_NUM_THREADS" in os.environ:
        return {}
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"RAYON_NUM_THREADS": str(max(1, (cores or 1) // workers))}


def replace_dir(new: Path, target: Path) -> None:
    """Put the directory ``new`` at ``target``, replacing what was there."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def fresh_dir(path: Path) -> Path:
    """``path`` as an empty directory."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path
