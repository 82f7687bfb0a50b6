"""The generated tasks' scores as a researcher can read them: both item sets, beside chance and
the strongest trivial baseline, with their contamination and their difficulty tiers.

For each task and item set (``dev``: to choose and tune on; ``test``: reported), flat keys of
``metrics/eval.json``:

- the model's harness scores ``<task>/<set>/{acc,acc_stderr,acc_norm,...,n,chance}`` and per
  tier ``<task>/<set>/tier/<tier>/{acc,acc_stderr,n}`` (:mod:`evaluation.harness`);
- every trivial baseline ``<task>/<set>/baseline/<name>``, the strongest
  ``<task>/<set>/baseline_best`` and the model's margin over it in stderr
  ``<task>/<set>/above_baseline_stderr`` (:mod:`evaluation.baselines`; the unigram LM is scored
  through the harness like the model);
- ``<task>/<set>/contamination``: the share of items that share a 13-gram with the training
  split (:mod:`pipeline.data.contamination`; 0 for the shipped synthetic items by construction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
from lm_eval.api.model import LM
from tokenizers import Tokenizer

from evaluation.baselines import baseline_metrics
from evaluation.harness import BenchmarkFile, run_harness
from evaluation.lm_adapter import UnigramLM
from evaluation.standard_tasks import StandardTasks
from pipeline.data.benchmark_sets import ITEM_SETS, item_text, read_items
from pipeline.data.contamination import contamination_rates


def score_tasks(
    model: LM,
    tasks: list[str],
    standard: StandardTasks,
    benchmark: BenchmarkFile,
    limit: int | None,
    seed: int,
    unigram: tuple[np.ndarray, Tokenizer, int],
    training_text: Callable[[], Iterable[Sequence[str]]],
) -> dict[str, float]:
    """Every key above for the generated ``tasks``, and the ``standard`` tasks' scores.

    ``unigram``: the training tokens' histogram, the tokenizer and the end-of-text id, for the
    unigram baseline; ``training_text`` streams the training split in batches of texts.
    """
    metrics = run_harness(model, tasks, standard, benchmark, limit, seed)
    if not tasks:
        return metrics
    unigram = UnigramLM(*unigram)
    unigram_scores = run_harness(unigram, tasks, StandardTasks(), benchmark, limit, seed)
    items = {
        (task, item_set): read_items(benchmark(task, item_set))[:limit]
        for task in tasks
        for item_set in ITEM_SETS
    }
    for (task, item_set), task_items in items.items():
        metrics |= baseline_metrics(
            task, item_set, task_items, items[task, "dev"], metrics, unigram_scores
        )
    texts = {f"{t}/{s}": [item_text(item) for item in i] for (t, s), i in items.items()}
    for key, rate in contamination_rates(texts, training_text()).items():
        metrics[f"{key}/contamination"] = rate
    return metrics
