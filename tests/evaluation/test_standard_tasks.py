"""Standard lm-eval tasks, run with lm-eval's own definitions against local mirrors in the Hub's
layout: through the evaluate stage, each score equal to the same log-likelihoods computed
directly with the model; and the mirror's errors name the path and the fix."""

from __future__ import annotations

import json
import math
import re
import shutil

import pyarrow.parquet as pq
import pytest
import torch
import yaml
from lm_eval.tasks import TaskManager
from tokenizers import Tokenizer

from evaluation.standard_tasks import (
    HarnessError,
    StandardTasks,
    dataset_ids,
    load_standard_tasks,
)
from pipeline.config import TokenizeConfig
from pipeline.model_io import load_model, model_identity, save_model
from pipeline.paths import Paths
from stages import evaluate

from .mirrors import ARC, BLIMP, BLIMP_SUBSET, LAMBADA, STANDARD_TASKS, WIKITEXT, build_mirror
from .test_stage import PARAMS, stand_in_upstream_runs

# Float32 sums over a few dozen tokens, batched and padded differently by the harness than here.
REL = 1e-4


class Direct:
    """Log-likelihoods computed straight from the model's logits, without the harness."""

    def __init__(self, paths: Paths):
        self.model = load_model(paths.model_files)
        self.tokenizer = Tokenizer.from_file(str(paths.tokenizer_file))
        self.eot = self.tokenizer.token_to_id(TokenizeConfig().eot_token)
        self.window = self.model.cfg.max_seq_len

    def ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    @torch.no_grad()
    def score(self, inputs: list[int], targets: list[int]) -> tuple[float, bool]:
        """Sum of log p(targets) where ``inputs[-len(targets):]`` predict them; all greedy?"""
        logprobs = self.model(torch.tensor([inputs])).logits[0].log_softmax(-1)
        picked = logprobs[len(inputs) - len(targets) :]
        target = torch.tensor(targets)
        total = picked.gather(-1, target[:, None]).sum().item()
        return total, bool((picked.argmax(-1) == target).all())

    def continuation(self, context: str, continuation: str) -> tuple[float, bool]:
        """log p(continuation | context), the context cut to the model's window from the left,
        end-of-text standing in for an empty context."""
        context_ids = self.ids(context) if context else [self.eot]
        cont = self.ids(continuation)
        return self.score((context_ids + cont)[-(self.window + 1) : -1], cont)

    def document(self, text: str) -> float:
        """log p(text), predicted ``window`` tokens at a time; each step's inputs are the
        ``window`` tokens before its last target, end-of-text first (lm-eval's rolling windows:
        a short last window still sees the text before it)."""
        ids = self.ids(text)
        inputs = [self.eot, *ids]
        total = 0.0
        for start in range(0, len(ids), self.window):
            end = min(start + self.window, len(ids))
            total += self.score(inputs[max(0, end - self.window) : end], ids[start:end])[0]
        return total


def choice_accuracy(direct: Direct, prompts_choices_answers) -> float:
    hits = [
        max(range(len(c)), key=lambda i: direct.continuation(prompt, c[i])[0]) == answer
        for prompt, c, answer in prompts_choices_answers
    ]
    return sum(hits) / len(hits)


@pytest.fixture
def evaluated(tmp_path, data_root, model, mlflow_uri, monkeypatch):
    root = tmp_path / "repo"
    shutil.copytree(data_root, root)
    paths = Paths(root=root)
    save_model(model, model_identity(model.cfg, model.vocab_size), paths.model_files)
    build_mirror(root / "mirror")
    evaluate_params = {**PARAMS["evaluate"], "tasks": [], "extra_tasks": list(STANDARD_TASKS)}
    params = {**PARAMS, "evaluate": {**evaluate_params, "datasets_mirror": "mirror"}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stand_in_upstream_runs(root, mlflow_uri)
    monkeypatch.chdir(root)
    evaluate.main()
    return json.loads(paths.eval_metrics.read_text()), Direct(paths), root / "mirror"


def rows(mirror, hub_id: str, config: str, split: str) -> list[dict]:
    return pq.read_table(mirror / hub_id / config / f"{split}-00000-of-00001.parquet").to_pylist()


def test_mirrored_tasks_score_the_direct_loglikelihoods(evaluated):
    metrics, direct, mirror = evaluated

    arc = rows(mirror, ARC, "ARC-Easy", "test")
    expected = choice_accuracy(
        direct,
        [
            (
                f"Question: {d['question']}\nAnswer:",
                [" " + t for t in d["choices"]["text"]],
                d["choices"]["label"].index(d["answerKey"]),
            )
            for d in arc
        ],
    )
    assert metrics["arc_easy/acc"] == pytest.approx(expected)
    assert metrics["arc_easy/n"] == len(arc)
    assert metrics["arc_easy/chance"] == 0.25

    blimp = rows(mirror, BLIMP, BLIMP_SUBSET, "train")
    expected = choice_accuracy(
        # lm-eval puts its default target delimiter, a space, before each choice here too.
        direct,
        [("", [" " + d["sentence_good"], " " + d["sentence_bad"]], 0) for d in blimp],
    )
    assert metrics[f"blimp_{BLIMP_SUBSET}/acc"] == pytest.approx(expected)
    assert metrics[f"blimp_{BLIMP_SUBSET}/chance"] == 0.5

    lambada = [d["text"].rsplit(" ", 1) for d in rows(mirror, LAMBADA, "default", "test")]
    scored = [direct.continuation(context, " " + word) for context, word in lambada]
    assert metrics["lambada_openai/acc"] == pytest.approx(
        sum(greedy for _, greedy in scored) / len(scored)
    )
    mean_logprob = sum(logprob for logprob, _ in scored) / len(scored)
    assert metrics["lambada_openai/perplexity"] == pytest.approx(math.exp(-mean_logprob), rel=REL)

    pages = [d["page"] for d in rows(mirror, WIKITEXT, "wikitext-2-raw-v1", "test")]
    assert max(len(direct.ids(p)) for p in pages) > direct.window  # the rolling windows bite
    logprob = sum(direct.document(p) for p in pages)
    words = sum(len(re.split(r"\s+", p)) for p in pages)
    assert metrics["wikitext/word_perplexity"] == pytest.approx(math.exp(-logprob / words), rel=REL)
    bytes_ = sum(len(p.encode()) for p in pages)
    assert metrics["wikitext/bits_per_byte"] == pytest.approx(
        -logprob / bytes_ / math.log(2), rel=REL
    )
    assert not any(key.startswith("datasets_mirror") for key in metrics)


@pytest.fixture(scope="module")
def manager() -> TaskManager:
    return TaskManager()  # indexes lm-eval's ~15,000 task configs: ~15 s, once for the module


def test_a_missing_mirror_dataset_names_the_path_and_the_task(manager, tmp_path):
    build_mirror(tmp_path)
    shutil.rmtree(tmp_path / LAMBADA)
    tasks = StandardTasks(("arc_easy", "lambada_openai"), tmp_path)
    with pytest.raises(HarnessError, match=rf"{tmp_path / LAMBADA} not found.*'lambada_openai'"):
        load_standard_tasks(manager, tasks, tmp_path / "cache")


def test_a_mirror_missing_the_split_a_task_evaluates_names_it(manager, tmp_path):
    build_mirror(tmp_path)
    (tmp_path / ARC / "ARC-Easy" / "test-00000-of-00001.parquet").unlink()
    readme = tmp_path / ARC / "README.md"
    readme.write_text(re.sub(r"  - split: test\n.*\n", "", readme.read_text()))
    with pytest.raises(HarnessError, match=rf"split 'test' is missing from the mirror {tmp_path}"):
        load_standard_tasks(manager, StandardTasks(("arc_easy",), tmp_path), tmp_path / "cache")


def test_an_edited_mirror_is_read_afresh(manager, tmp_path):
    """The ``datasets`` cache alone would serve the first copy (same path, mtime-keyed)."""
    build_mirror(tmp_path)
    test_file = tmp_path / ARC / "ARC-Easy" / "test-00000-of-00001.parquet"
    for rows_kept, cache in ((6, "first"), (3, "second")):
        pq.write_table(pq.read_table(test_file).slice(0, rows_kept), test_file)
        (task,) = load_standard_tasks(
            manager, StandardTasks(("arc_easy",), tmp_path), tmp_path / cache
        )
        assert len(list(task.get_all_tasks()[0].eval_docs)) == rows_kept


def test_a_group_or_tag_is_mirrored_when_all_its_tasks_read_one_dataset(manager, tmp_path):
    assert dataset_ids(manager, "blimp") == {BLIMP}  # a group of 67 subsets
    assert dataset_ids(manager, "ai2_arc") == {ARC}  # a tag: arc_easy and arc_challenge
    assert dataset_ids(manager, "lambada") == {LAMBADA, "cimec/lambada"}
    with pytest.raises(HarnessError, match=r"'lambada' reads several datasets"):
        load_standard_tasks(
            manager, StandardTasks(("lambada",), build_mirror(tmp_path)), tmp_path / "cache"
        )


def test_unknown_task_is_named(manager, tmp_path):
    with pytest.raises(HarnessError, match=r"\['no_such_task'\] are not lm-eval tasks"):
        load_standard_tasks(manager, StandardTasks(("no_such_task",), tmp_path), tmp_path)
