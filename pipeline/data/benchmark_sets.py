"""The benchmark item files: written by prepare, read by evaluate.

``data/benchmarks/<split>/<task>.jsonl`` for the ``dev`` and ``test`` item sets (lm-eval
``json`` datasets: one multiple-choice item per line, sorted keys, with ``choices``, ``answer``
and the difficulty ``tier``). Prepare draws them
(:func:`pipeline.data.synthetic.benchmarks.write_benchmark_sets`); evaluate reads them here,
without the generator.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import atomic_path

Item = dict
ITEM_SETS = ("dev", "test")  # dev: to choose and tune on; test: reported


def item_text(item: Item) -> str:
    """The words an item shows a model (for de-duplication and contamination checks)."""
    if "context" in item:
        return f"{item['context']} {item['question']}"
    return " ".join(item["choices"])


def write_items(path: Path, items: Sequence[Item]) -> None:
    with atomic_path(path) as tmp:
        lines = (json.dumps(item, sort_keys=True) + "\n" for item in items)
        tmp.write_text("".join(lines), encoding="utf-8")


def read_items(path: Path) -> list[Item]:
    """The items of one benchmark file, each checked to be a multiple-choice item."""
    if not path.is_file():
        raise PipelineError(f"{path}: benchmark file not found (run the prepare stage)")
    items = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PipelineError(f"{path}:{line_no}: not valid JSON ({exc.msg})") from None
        if not {"choices", "answer", "tier"} <= set(item):
            raise PipelineError(f"{path}:{line_no}: an item needs 'choices', 'answer' and 'tier'")
        items.append(item)
    return items
