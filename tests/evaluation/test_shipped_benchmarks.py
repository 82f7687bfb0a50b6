"""The benchmark items of the shipped default (``params.yaml`` as it is), not a smaller corpus:
no test or dev item shares a 13-gram with the training split, and no trivial baseline — the rules
and the unigram language model scored through lm-eval — gets more than chance + 0.05."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer

from evaluation.baselines import chance, rule_baselines
from evaluation.harness import run_harness
from evaluation.lm_adapter import UnigramLM
from evaluation.standard_tasks import StandardTasks
from pipeline.config import LOCAL_TASKS, load_params
from pipeline.data.benchmark_sets import ITEM_SETS, item_text, read_items
from pipeline.data.contamination import contamination_rates
from pipeline.data.prepared import iter_texts, read_prepared
from pipeline.data.shards import open_split, token_counts
from pipeline.paths import Paths
from stages import prepare, tokenize

REPO = Path(__file__).resolve().parents[2]
# The bar for "a lazy model finds nothing": chance plus five points.
MAX_OVER_CHANCE = 0.05


@pytest.fixture(scope="module")
def shipped(tmp_path_factory) -> Paths:
    """Prepare and tokenize with the shipped params: ~15 s on a 2-core machine."""
    params = load_params(REPO / "params.yaml")
    assert params.prepare.source == "synthetic"
    paths = Paths(root=tmp_path_factory.mktemp("shipped"))
    prepare.run(params, paths)
    tokenize.run(params, paths)
    return paths


def items(paths: Paths, task: str, item_set: str) -> list[dict]:
    return read_items(paths.benchmark(task, item_set))


def test_no_item_shares_a_13_gram_with_the_training_split(shipped):
    texts = {
        f"{task}/{item_set}": [item_text(item) for item in items(shipped, task, item_set)]
        for task in LOCAL_TASKS
        for item_set in ITEM_SETS
    }
    training = iter_texts(read_prepared(shipped.prepared_split("train")), 4096)
    assert contamination_rates(texts, training) == {key: 0.0 for key in texts}


def test_no_rule_baseline_beats_chance_by_more_than_five_points(shipped):
    for task in LOCAL_TASKS:
        test, dev = items(shipped, task, "test"), items(shipped, task, "dev")
        ceiling = chance(test) + MAX_OVER_CHANCE
        scores = {b.name: b.accuracy for b in rule_baselines(task, test, dev)}
        assert len(scores) >= 4
        assert {name: s for name, s in scores.items() if s > ceiling} == {}, task


def test_the_unigram_language_model_stays_near_chance(shipped):
    tokenizer = Tokenizer.from_file(str(shipped.tokenizer_file))
    train = open_split(shipped.token_split("train"))
    unigram = UnigramLM(token_counts(train), tokenizer, train.eot_id)
    scores = run_harness(
        unigram,
        list(LOCAL_TASKS),
        StandardTasks(),
        shipped.benchmark,
        limit=None,
        seed=0,
    )
    for task in LOCAL_TASKS:
        key = f"{task}/test"
        assert scores[f"{key}/n"] == len(items(shipped, task, "test"))
        assert scores[f"{key}/acc"] <= scores[f"{key}/chance"] + MAX_OVER_CHANCE, task
