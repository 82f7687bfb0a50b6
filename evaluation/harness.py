"""Benchmarks through lm-evaluation-harness: the generated tasks and any standard ones.

The generated tasks' configs live in ``evaluation/tasks/*.yaml`` without a data location; at run
time they are copied into a temporary include directory with the absolute path of
``data/benchmarks/<task>.jsonl`` filled in and loaded through ``TaskManager(include_path=...)``,
so the harness reads exactly the files DVC tracks. lm-eval's built-in task index (about 15,000
configs, ~15 s to scan) is only built when standard tasks (``evaluate.extra_tasks``) are asked
for.

Standard tasks download their datasets from the Hugging Face Hub. Offline or uncached, loading
one raises :class:`HarnessError` naming the task, before any model call; with the Hub
unreachable but offline mode unset, a 5-second probe fails first instead of the datasets
library's minute of retries.
"""

from __future__ import annotations

import logging
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import datasets
import yaml
from lm_eval import simple_evaluate
from lm_eval.api.group import Group
from lm_eval.api.model import LM
from lm_eval.api.task import Task
from lm_eval.tasks import TaskManager

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).parent / "tasks"
_HUB_TIMEOUT_S = 5.0


class HarnessError(PipelineError):
    """A task is unknown, its data is missing, or its dataset cannot be fetched."""


def write_task_configs(tasks: list[str], benchmarks_dir: Path, out_dir: Path) -> None:
    """Copy each task's template into ``out_dir`` with its data file's absolute path."""
    for name in tasks:
        data = benchmarks_dir / f"{name}.jsonl"
        if not data.is_file():
            raise HarnessError(f"{data}: benchmark file not found (run the prepare stage)")
        config = yaml.safe_load((TASKS_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        config["dataset_kwargs"] = {
            "data_files": {"test": str(data.resolve())},
            # The Arrow cache of these small files lives and dies with the temporary directory.
            "cache_dir": str(out_dir / "datasets-cache"),
        }
        (out_dir / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _offline() -> bool:
    return any(
        os.environ.get(key, "").lower() in ("1", "true", "yes", "on")
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def check_hub_reachable(tasks: list[str]) -> None:
    """Unless offline mode is on, fail in seconds when the Hub cannot be reached."""
    if _offline():
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(f"{endpoint}/api/datasets?limit=1", timeout=_HUB_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise HarnessError(
            f"evaluate.extra_tasks {tasks} need their datasets from the Hugging Face Hub, and "
            f"{endpoint} is unreachable ({exc}); connect to the network, or set "
            "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 to use datasets already in the cache"
        ) from None


def load_standard_task(manager: TaskManager, name: str) -> list[Task | Group]:
    """Build one standard task (or group), turning a missing dataset into a clear error."""
    if name not in manager.all_tasks:
        raise HarnessError(f"evaluate.extra_tasks: {name!r} is not an lm-eval task or group")
    try:
        loaded = manager.load([name])
    except (OSError, datasets.exceptions.DatasetsError) as exc:
        raise HarnessError(
            f"lm-eval task {name!r}: its dataset could not be loaded "
            f"({type(exc).__name__}: {exc}). Standard tasks need network access to the Hugging "
            "Face Hub or a copy in the local datasets cache (HF_DATASETS_CACHE)"
        ) from exc
    # Hand the harness the top-level items only: a group brings its own subtasks.
    children = {child for kids in loaded["group_map"].values() for child in kids}
    top = [group for key, group in loaded["groups"].items() if key not in children]
    grouped = {task.task_name for group in top for task in group.get_all_tasks()}
    return [*top, *(task for key, task in loaded["tasks"].items() if key not in grouped)]


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


def flat_scores(results: dict[str, Any], chance: dict[str, float | None]) -> dict[str, float]:
    """``<task>/<metric>`` (``/<filter>`` unless ``none``), ``<task>/chance``, ``<task>/n``.

    Stderr keys keep the harness's name (``acc_stderr``); a stderr the harness could not compute
    ("N/A") is left out rather than written as a fake number.
    """
    flat: dict[str, float] = {}
    for task, metrics in results["results"].items():
        for key, value in metrics.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or not isinstance(value, int | float):
                continue
            suffix = "" if filter_name == "none" else f"/{filter_name}"
            flat[f"{task}/{metric}{suffix}"] = float(value)
        if task in results.get("n-samples", {}):
            flat[f"{task}/n"] = results["n-samples"][task]["effective"]
        if chance.get(task) is not None:
            flat[f"{task}/chance"] = chance[task]
    return flat


def run_harness(
    lm: LM,
    tasks: list[str],
    extra_tasks: list[str],
    benchmarks_dir: Path,
    limit: int | None,
    seed: int,
) -> dict[str, float]:
    """Evaluate ``lm`` on the generated ``tasks`` and the standard ``extra_tasks``."""
    if not tasks and not extra_tasks:
        return {}
    if extra_tasks:
        check_hub_reachable(extra_tasks)
    with tempfile.TemporaryDirectory(prefix="moe-eval-tasks-") as include:
        write_task_configs(tasks, benchmarks_dir, Path(include))
        manager = TaskManager(include_path=include, include_defaults=bool(extra_tasks))
        loaded: list[Task | Group] = list(manager.load(tasks)["tasks"].values())
        for name in extra_tasks:
            loaded.extend(load_standard_task(manager, name))
        chance = {t.task_name: chance_level(t, limit) for t in leaf_tasks(loaded)}
        log.info("lm-eval tasks: %s", ", ".join(sorted(chance)))
        results = simple_evaluate(
            model=lm,
            tasks=loaded,
            task_manager=manager,
            limit=limit,
            log_samples=False,
            random_seed=seed,
            numpy_random_seed=seed,
            torch_random_seed=seed,
            fewshot_random_seed=seed,
        )
    return flat_scores(results, chance)
