"""The generated tasks through lm-evaluation-harness: configs load for both item sets, scoring
and the difficulty tiers are wired right, and standard tasks fail fast and clearly when their
data cannot be fetched."""

from __future__ import annotations

import time

import pytest
from lm_eval.api.model import LM

from evaluation.harness import run_harness
from evaluation.standard_tasks import HarnessError, StandardTasks, check_hub_reachable
from pipeline.config import LOCAL_TASKS
from pipeline.data.benchmark_sets import ITEM_SETS, read_items
from pipeline.paths import Paths

from .conftest import BENCHMARK_ITEMS


def items(data_root, task: str, item_set: str) -> list[dict]:
    return read_items(Paths(root=data_root).benchmark(task, item_set))


def right_answers(data_root) -> set[tuple[str, str]]:
    """The (context, continuation) request of every correct choice, as the task configs build
    them: BLiMP style (empty context) for agreement, ``"<context> <question>"`` +
    ``" <choice>"`` otherwise."""
    right = set()
    for item_set in ITEM_SETS:
        for item in items(data_root, "agreement", item_set):
            right.add(("", item["choices"][item["answer"]]))
        for task in ("entity_cloze", "counting"):
            for item in items(data_root, task, item_set):
                prompt = f"{item['context']} {item['question']}"
                right.add((prompt, " " + item["choices"][item["answer"]]))
    return right


class ChoosingLM(LM):
    """Gives log-likelihood 0 to the requests in ``preferred`` and -1 to all others."""

    def __init__(self, preferred: set[tuple[str, str]], invert: bool = False):
        super().__init__()
        self.preferred, self.invert = preferred, invert
        self.requests: list[tuple[str, str]] = []

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.requests += [r.args for r in requests]
        return [
            (0.0 if (r.args in self.preferred) != self.invert else -1.0, False) for r in requests
        ]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise AssertionError("not used by multiple-choice tasks")

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise AssertionError("not used by multiple-choice tasks")


@pytest.mark.parametrize(("invert", "expected"), [(False, 1.0), (True, 0.0)])
def test_a_model_preferring_the_right_answer_scores_one(data_root, invert, expected):
    right = right_answers(data_root)
    lm = ChoosingLM(right, invert)
    benchmark = Paths(root=data_root).benchmark
    scores = run_harness(lm, list(LOCAL_TASKS), StandardTasks(), benchmark, None, 0)
    assert right <= set(lm.requests)  # every right answer was asked about
    for task in LOCAL_TASKS:
        for item_set in ITEM_SETS:
            key = f"{task}/{item_set}"
            assert scores[f"{key}/acc"] == expected
            assert scores[f"{key}/acc_stderr"] == 0.0
            assert scores[f"{key}/n"] == BENCHMARK_ITEMS
    assert scores["agreement/test/chance"] == 0.5
    assert scores["counting/test/chance"] == 0.25
    cloze = items(data_root, "entity_cloze", "test")
    expected_chance = sum(1 / len(i["choices"]) for i in cloze) / len(cloze)
    assert scores["entity_cloze/test/chance"] == pytest.approx(expected_chance)


def test_tiers_split_the_items_and_carry_their_own_accuracy(data_root):
    """A model right on the first-tier counting items and wrong on the others: that tier
    scores 1, the others 0."""
    test = items(data_root, "counting", "test")
    first = sorted({i["tier"] for i in test})[0]
    preferred = set()
    for i in test:
        pick = i["answer"] if i["tier"] == first else (i["answer"] + 1) % len(i["choices"])
        preferred.add((f"{i['context']} {i['question']}", " " + i["choices"][pick]))
    benchmark = Paths(root=data_root).benchmark
    scores = run_harness(ChoosingLM(preferred), ["counting"], StandardTasks(), benchmark, None, 0)
    tiers: dict[str, int] = {}
    for item in test:
        tiers[item["tier"]] = tiers.get(item["tier"], 0) + 1
    for tier, n in tiers.items():
        prefix = f"counting/test/tier/{tier}"
        assert scores[f"{prefix}/acc"] == (1.0 if tier == first else 0.0)
        assert scores[f"{prefix}/n"] == n
    assert sum(scores[f"counting/test/tier/{t}/n"] for t in tiers) == len(test)


def test_limit_caps_the_items(data_root):
    lm = ChoosingLM(set())
    benchmark = Paths(root=data_root).benchmark
    scores = run_harness(lm, ["counting"], StandardTasks(), benchmark, 2, 0)
    assert scores["counting/dev/n"] == scores["counting/test/n"] == 2
    assert len(lm.requests) == 2 * 2 * 4  # 2 items of 4 choices in each item set
    assert not any(key.startswith("agreement") for key in scores)


def test_standard_task_offline_fails_fast_naming_it(data_root, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = ChoosingLM(set())
    start = time.perf_counter()
    benchmark = Paths(root=data_root).benchmark
    with pytest.raises(HarnessError, match=r"\['hellaswag'\].*network access to the Hub, a copy"):
        run_harness(lm, ["agreement"], StandardTasks(("hellaswag",)), benchmark, 2, 0)
    assert time.perf_counter() - start < 60  # indexing lm-eval's ~15,000 task configs: ~15 s
    assert lm.requests == []  # it failed before any model call


def test_unreachable_hub_fails_in_seconds(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(HarnessError, match=r"\['hellaswag'\] need .* unreachable.*datasets_mirror"):
        check_hub_reachable(("hellaswag",))


def test_missing_benchmark_file_is_a_clear_error(tmp_path):
    benchmark = Paths(root=tmp_path).benchmark
    with pytest.raises(HarnessError, match=r"dev/agreement.jsonl: benchmark file not found"):
        run_harness(ChoosingLM(set()), ["agreement"], StandardTasks(), benchmark, None, 0)
