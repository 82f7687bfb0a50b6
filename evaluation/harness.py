"""Benchmarks through lm-evaluation-harness: the generated tasks and any standard ones.

The generated tasks' configs live in ``evaluation/tasks/*.yaml`` without a data location; at run
time each is copied into a temporary include directory once per item set (``<task>_dev``,
``<task>_test``) with the absolute path of ``data/benchmarks/<split>/<task>.jsonl`` filled in and
loaded through ``TaskManager(include_path=...)``, so the harness reads exactly the files DVC
tracks. Scores are flattened to ``<task>/<split>/<metric>``, and per difficulty tier (the
items' ``tier`` field, from the harness's per-item results) to
``<task>/<split>/tier/<tier>/{acc,acc_stderr,n}``. lm-eval's built-in task index (about 15,000
configs, ~15 s to scan) is only built when standard tasks (``evaluate.extra_tasks``,
:mod:`evaluation.standard_tasks`) are asked for.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from lm_eval import simple_evaluate
from lm_eval.api.group import Group
from lm_eval.api.model import LM
from lm_eval.api.task import Task
from lm_eval.tasks import TaskManager

from evaluation.standard_tasks import MIRROR_GROUP, HarnessError, StandardTasks, load_standard_tasks
from pipeline.data.benchmark_sets import ITEM_SETS

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
BenchmarkFile = Callable[[str, str], Path]  # (task, item set) -> its JSONL file


def harness_task(task: str, item_set: str) -> str:
    """The harness's name of one generated task's item set."""
    return f"{task}_{item_set}"


def write_task_configs(tasks: list[str], benchmark: BenchmarkFile, out_dir: Path) -> list[str]:
    """Copy each task's template into ``out_dir`` once per item set, with its data file's
    absolute path; return the harness task names."""
    names = []
    for task in tasks:
        template = yaml.safe_load((TASKS_DIR / f"{task}.yaml").read_text(encoding="utf-8"))
        for item_set in ITEM_SETS:
            data = benchmark(task, item_set)
            if not data.is_file():
                raise HarnessError(f"{data}: benchmark file not found (run the prepare stage)")
            name = harness_task(task, item_set)
            config = {**template, "task": name}
            config["dataset_kwargs"] = {
                "data_files": {"test": str(data.resolve())},
                # The Arrow cache of these small files lives and dies with the temporary dir.
                "cache_dir": str(out_dir / "datasets-cache"),
            }
            (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
            names.append(name)
    return names


def leaf_tasks(items: list[Task | Group]) -> list[Task]:
    return [
        t for item in items for t in (item.get_all_tasks() if isinstance(item, Group) else [item])
    ]


def chance_level(task: Task, limit: int | None) -> float | None:
    """Mean of ``1 / number of choices`` over the evaluated documents (multiple choice only)."""
    if task.get_config("output_type") != "multiple_choice":
        return None
    docs = list(task.eval_docs)[:limit] if limit else list(task.eval_docs)
    return sum(1 / len(task.doc_to_choice(doc)) for doc in docs) / len(docs)


def metric_key(task: str, local: dict[str, tuple[str, str]]) -> str:
    """``<task>/<item set>`` for a generated task's item set, the task's own name otherwise."""
    return "/".join(local[task]) if task in local else task


def flat_scores(
    results: dict[str, Any], chance: dict[str, float | None], local: dict[str, tuple[str, str]]
) -> dict[str, float]:
    """``<key>/<metric>`` (``/<filter>`` unless ``none``), ``<key>/chance``, ``<key>/n``, with
    ``<key>`` from :func:`metric_key`.

    Stderr keys keep the harness's name (``acc_stderr``); a stderr the harness could not compute
    ("N/A") is left out rather than written as a fake number.
    """
    flat: dict[str, float] = {}
    for task, metrics in results["results"].items():
        if task == MIRROR_GROUP:
            continue
        key = metric_key(task, local)
        for name, value in metrics.items():
            metric, _, filter_name = name.partition(",")
            if not filter_name or not isinstance(value, int | float):
                continue
            suffix = "" if filter_name == "none" else f"/{filter_name}"
            flat[f"{key}/{metric}{suffix}"] = float(value)
        if task in results.get("n-samples", {}):
            flat[f"{key}/n"] = results["n-samples"][task]["effective"]
        if chance.get(task) is not None:
            flat[f"{key}/chance"] = chance[task]
    return flat


def tier_scores(
    samples: dict[str, list[dict]], local: dict[str, tuple[str, str]]
) -> dict[str, float]:
    """Accuracy per difficulty tier of each generated task's items:
    ``<task>/<set>/tier/<tier>/{acc,acc_stderr,n}`` (stderr of a mean, as the harness's;
    none for a tier of one item)."""
    flat: dict[str, float] = {}
    for task, logged in samples.items():
        if task not in local:
            continue
        by_tier: dict[str, list[float]] = defaultdict(list)
        for sample in logged:
            by_tier[sample["doc"]["tier"]].append(float(sample["acc"]))
        for tier, hits in sorted(by_tier.items()):
            n, mean = len(hits), sum(hits) / len(hits)
            prefix = f"{metric_key(task, local)}/tier/{tier}"
            flat |= {f"{prefix}/acc": mean, f"{prefix}/n": float(n)}
            if n > 1:  # one item has no spread to estimate; NaN would not survive JSON
                variance = mean * (1 - mean) * n / (n - 1)
                flat[f"{prefix}/acc_stderr"] = math.sqrt(variance / n)
    return flat


def run_harness(
    lm: LM,
    tasks: list[str],
    standard: StandardTasks,
    benchmark: BenchmarkFile,
    limit: int | None,
    seed: int,
) -> dict[str, float]:
    """Evaluate ``lm`` on both item sets of the generated ``tasks`` and the ``standard`` ones."""
    if not tasks and not standard.names:
        return {}
    with tempfile.TemporaryDirectory(prefix="moe-eval-tasks-") as include:
        names = write_task_configs(tasks, benchmark, Path(include))
        local = {harness_task(t, s): (t, s) for t in tasks for s in ITEM_SETS}
        manager = TaskManager(include_path=include, include_defaults=bool(standard.names))
        loaded: list[Task | Group] = list(manager.load(names)["tasks"].values())
        if standard.names:
            loaded.extend(load_standard_tasks(manager, standard, Path(include) / "datasets"))
        chance = {t.task_name: chance_level(t, limit) for t in leaf_tasks(loaded)}
        log.info("lm-eval tasks: %s", ", ".join(sorted(chance)))
        results = simple_evaluate(
            model=lm,
            tasks=loaded,
            task_manager=manager,
            limit=limit,
            log_samples=True,  # per-item results: the tiers
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return flat_scores(results, chance, local) | tier_scores(results["samples"], local)
