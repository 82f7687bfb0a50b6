"""Standard lm-eval tasks (``evaluate.extra_tasks``): lm-eval's own task definitions, with their
datasets from the Hugging Face Hub or from a local mirror (``evaluate.datasets_mirror``).

The task definitions are always the YAMLs shipped inside the installed ``lm_eval`` package,
never copies. With a mirror, only each task's ``dataset_path`` changes: ``<hub id>`` becomes
``<mirror>/<hub id>``, a directory in the Hub's layout (a ``README.md`` whose ``configs:`` front
matter maps each config's splits to its files, as on the Hub, or ``<split>-*.parquet`` files
the ``datasets`` library finds by their names). The redirect goes through lm-eval's inline group
syntax: one wrapper group whose members name the registered tasks (or groups) with a
``dataset_path`` override, which lm-eval merges over the registered config — so prompts,
metrics and filters stay exactly lm-eval's. The split a task evaluates (its YAML's ``test_split``,
else ``validation_split``) must exist in the mirror; a missing one is named in the error. The
mirror is converted into a cache private to the run, because the ``datasets`` cache keys local
files by path and modification time and served a stale copy of an edited mirror.

Without a mirror the datasets come from the Hub: offline or uncached, loading one raises
:class:`HarnessError` naming the task, before any model call; with the Hub unreachable but
offline mode unset, a 5-second probe fails first instead of the datasets library's minute of
retries.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
from lm_eval.api.group import Group
from lm_eval.api.task import Task
from lm_eval.tasks import TaskManager

from pipeline.errors import PipelineError
from pipeline.io import unreachable

_HUB_TIMEOUT_S = 5.0
# The wrapper group that carries the mirror overrides; it has no metrics of its own.
MIRROR_GROUP = "datasets_mirror"


class HarnessError(PipelineError):
    """A task is unknown, its data is missing, or its dataset cannot be fetched."""


@dataclass(frozen=True)
class StandardTasks:
    """lm-eval task or group names, and where their datasets are (``None``: the Hub)."""

    names: tuple[str, ...] = ()
    mirror: Path | None = None


def _offline() -> bool:
    return any(
        os.environ.get(key, "").lower() in ("1", "true", "yes", "on")
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def check_hub_reachable(tasks: tuple[str, ...]) -> None:
    """Unless offline mode is on, fail in seconds when the Hub cannot be reached."""
    if _offline():
        return
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    why = unreachable(f"{endpoint}/api/datasets?limit=1", _HUB_TIMEOUT_S)
    if why is not None:
        raise HarnessError(
            f"evaluate.extra_tasks {list(tasks)} need their datasets from the Hugging Face Hub, "
            f"and {endpoint} is unreachable ({why}); connect to the network, point "
            "evaluate.datasets_mirror at a local copy in the Hub's layout, or set "
            "HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1 to use datasets already in the cache"
        )


def dataset_ids(manager: TaskManager, name: str) -> set[str]:
    """The Hub dataset ids a registered task, group or tag reads (a group: all its members')."""
    entry = manager.task_index[name]
    if entry.kind.name == "TAG":
        return set().union(*(dataset_ids(manager, task) for task in entry.tags))
    if entry.kind.name == "GROUP":
        ids: set[str] = set()
        for member in entry.cfg["task"]:
            if isinstance(member, str):
                ids |= dataset_ids(manager, member)
            elif "dataset_path" in member:
                ids.add(member["dataset_path"])
            else:
                ids |= dataset_ids(manager, member.get("task") or member["group"])
        return ids
    return {entry.cfg["dataset_path"]}


def mirror_spec(manager: TaskManager, names: tuple[str, ...], mirror: Path) -> dict:
    """The inline wrapper group that points each task (or group) at its mirrored dataset."""
    members = []
    for name in names:
        (hub_id, *others) = sorted(dataset_ids(manager, name))
        if others:
            raise HarnessError(
                f"evaluate.extra_tasks: {name!r} reads several datasets ({[hub_id, *others]}); "
                "with evaluate.datasets_mirror, list its tasks one by one"
            )
        local = mirror / hub_id
        if not local.is_dir():
            raise HarnessError(
                f"evaluate.datasets_mirror: {local} not found, the mirror of {hub_id!r} that "
                f"lm-eval task {name!r} reads; copy the dataset there in the Hub's layout "
                "(README.md with its configs, data files per config and split)"
            )
        kind = "group" if manager.task_index[name].kind.name == "GROUP" else "task"
        members.append({kind: name, "dataset_path": str(local.resolve())})
    return {"group": MIRROR_GROUP, "task": members}


@contextmanager
def _datasets_cache(path: Path | None) -> Iterator[None]:
    """Point the ``datasets`` cache at ``path`` while tasks load (``None``: leave it)."""
    before = datasets.config.HF_DATASETS_CACHE
    if path is not None:
        datasets.config.HF_DATASETS_CACHE = path
    try:
        yield
    finally:
        datasets.config.HF_DATASETS_CACHE = before


def load_standard_tasks(
    manager: TaskManager, tasks: StandardTasks, cache_dir: Path
) -> list[Task | Group]:
    """Build the standard tasks (and groups), turning a missing dataset into a clear error.
    A mirror is converted into ``cache_dir``, which must outlive the evaluation (the loaded
    datasets are memory-mapped from it)."""
    unknown = [name for name in tasks.names if name not in manager.all_tasks]
    if unknown:
        raise HarnessError(f"evaluate.extra_tasks: {unknown} are not lm-eval tasks or groups")
    if tasks.mirror is None:
        check_hub_reachable(tasks.names)
    specs = [mirror_spec(manager, tasks.names, tasks.mirror)] if tasks.mirror else tasks.names
    where = f"the mirror {tasks.mirror}" if tasks.mirror else "the Hugging Face Hub"
    try:
        with _datasets_cache(cache_dir if tasks.mirror else None):
            loaded = manager.load(list(specs))
    except KeyError as exc:  # lm-eval indexes the loaded DatasetDict by its YAML's split names
        raise HarnessError(
            f"lm-eval tasks {list(tasks.names)}: split {exc} is missing from {where}; add "
            f"<config>/{exc.args[0]}-*.parquet and list it under the config in README.md"
        ) from exc
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        raise HarnessError(
            f"lm-eval tasks {list(tasks.names)}: a dataset could not be loaded from {where} "
            f"({type(exc).__name__}: {exc}). Standard tasks need network access to the Hub, a "
            "copy in the local datasets cache (HF_DATASETS_CACHE), or evaluate.datasets_mirror"
        ) from exc
    # Hand the harness the top-level items only: a group brings its own subtasks.
    children = {child for kids in loaded["group_map"].values() for child in kids}
    top = [group for key, group in loaded["groups"].items() if key not in children]
    grouped = {task.task_name for group in top for task in group.get_all_tasks()}
    return [*top, *(task for key, task in loaded["tasks"].items() if key not in grouped)]
