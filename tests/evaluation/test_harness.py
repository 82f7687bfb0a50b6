"""The generated tasks through lm-evaluation-harness: configs load, scoring is wired right, and
standard tasks fail fast and clearly when their data cannot be fetched."""

from __future__ import annotations

import json
import time

import pytest
from lm_eval.api.model import LM

from evaluation.harness import HarnessError, check_hub_reachable, run_harness
from pipeline.config import LOCAL_TASKS
from pipeline.paths import Paths

from .conftest import BENCHMARK_ITEMS


def read_items(data_root, task: str) -> list[dict]:
    path = Paths(root=data_root).benchmarks_dir / f"{task}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def right_answers(data_root) -> set[tuple[str, str]]:
    """The (context, continuation) request of every correct choice, as the task configs build
    them: BLiMP style for agreement, ``"<context> <question>"`` + ``" <choice>"`` otherwise."""
    right = {("", item["sentence_good"]) for item in read_items(data_root, "agreement")}
    for task in ("entity_cloze", "counting"):
        for item in read_items(data_root, task):
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
    scores = run_harness(lm, list(LOCAL_TASKS), [], Paths(root=data_root).benchmarks_dir, None, 0)
    assert right <= set(lm.requests)  # every right answer was asked about
    for task in LOCAL_TASKS:
        assert scores[f"{task}/acc"] == expected
        assert scores[f"{task}/acc_stderr"] == 0.0
        assert scores[f"{task}/n"] == BENCHMARK_ITEMS
    assert scores["agreement/chance"] == 0.5
    assert scores["counting/chance"] == 0.25
    cloze = read_items(data_root, "entity_cloze")
    expected_chance = sum(1 / len(i["choices"]) for i in cloze) / len(cloze)
    assert scores["entity_cloze/chance"] == pytest.approx(expected_chance)


def test_limit_caps_the_items(data_root):
    lm = ChoosingLM(set())
    scores = run_harness(lm, ["counting"], [], Paths(root=data_root).benchmarks_dir, 2, 0)
    assert scores["counting/n"] == 2 and len(lm.requests) == 2 * 4
    assert not any(key.startswith("agreement") for key in scores)


def test_standard_task_offline_fails_fast_naming_it(data_root, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    lm = ChoosingLM(set())
    start = time.perf_counter()
    with pytest.raises(HarnessError, match=r"'hellaswag'.*network access .* or a copy in the"):
        run_harness(lm, ["agreement"], ["hellaswag"], Paths(root=data_root).benchmarks_dir, 2, 0)
    assert time.perf_counter() - start < 60  # indexing lm-eval's ~15,000 task configs: ~15 s
    assert lm.requests == []  # it failed before any model call


def test_unreachable_hub_fails_in_seconds(monkeypatch):
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    with pytest.raises(HarnessError, match=r"\['hellaswag'\] need .* unreachable"):
        check_hub_reachable(["hellaswag"])


def test_missing_benchmark_file_is_a_clear_error(tmp_path):
    with pytest.raises(HarnessError, match=r"agreement.jsonl: benchmark file not found"):
        run_harness(ChoosingLM(set()), ["agreement"], [], tmp_path, None, 0)
