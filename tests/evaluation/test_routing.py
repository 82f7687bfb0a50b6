"""Routing analysis on a tiny random model and the synthetic test split: consistent counts, the
model's own statistics, word categories, the files of every analysis."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch

from evaluation.categories import CATEGORIES
from evaluation.routing import RoutingWindows, analyse_routing
from evaluation.routing_categories import CategoryRouting
from evaluation.routing_domains import TokenDomains
from evaluation.routing_report import LoadReport
from evaluation.routing_trace import trace_routing
from evaluation.token_bytes import token_bytes
from pipeline.config import EvaluateConfig
from pipeline.data.shards import open_split
from pipeline.data.word_categories import WordCategories, read_word_categories
from pipeline.paths import Paths

CPU = torch.device("cpu")
TOKENS = 200  # not a multiple of the 32-token window: a partial last window too


@pytest.fixture(scope="module")
def tokens(data_root):
    return open_split(Paths(root=data_root).token_split("test")).tokens


@pytest.fixture(scope="module")
def trace(model, tokens):
    return trace_routing(model, tokens, 32, TOKENS, 4, CPU)


@pytest.fixture(scope="module")
def words(data_root):
    return read_word_categories(Paths(root=data_root).word_categories)  # what prepare writes


def test_trace_covers_each_input_token_once(trace, tokens):
    assert sorted(trace.positions_N.tolist()) == list(range(TOKENS))
    assert np.array_equal(trace.token_ids_N, np.asarray(tokens)[trace.positions_N])
    assert [ids.shape for ids in trace.expert_ids] == [(TOKENS, 2), (TOKENS, 2)]


def test_counts_add_up(trace, tokens, tokenizer, words, model):
    load = LoadReport.from_trace(trace)
    categories = CategoryRouting.from_trace(trace, tokens, token_bytes(tokenizer), words)
    assert categories.category_tokens.sum() == TOKENS
    top_k = model.cfg.moe.top_k
    for layer, assignments in enumerate(categories.assignments):
        assert assignments.sum() == TOKENS * top_k
        # per category: each token sends k assignments
        assert np.array_equal(assignments.sum(1), categories.category_tokens * top_k)
        assert load.load[layer].sum() == pytest.approx(1.0)
        assert np.allclose(load.load[layer], assignments.sum(0) / (TOKENS * top_k))
        rows = categories.specialisation(layer).sum(1)
        assert np.allclose(rows[categories.category_tokens > 0], 1.0)
        assert np.all(rows[categories.category_tokens == 0] == 0)


def test_the_synthetic_text_has_word_categories(trace, tokens, tokenizer, words):
    report = CategoryRouting.from_trace(trace, tokens, token_bytes(tokenizer), words)
    counts = dict(zip(CATEGORIES, report.category_tokens.tolist(), strict=True))
    for category in ("noun", "verb", "name", "function", "punctuation"):
        assert counts[category] > 0, counts


def test_load_and_entropy_match_the_model_statistics(tokens, model):
    """One batch: the hook's ids give the load the model itself reports for that forward."""
    one = LoadReport.from_trace(trace_routing(model, tokens, 32, 64, 4, CPU))
    inputs = torch.from_numpy(tokens[:64].astype(np.int64)).view(2, 32)
    with torch.no_grad():
        stats = model(inputs).router_stats
    metrics = one.metrics()
    for index, layer_stats in enumerate(stats):
        assert np.allclose(one.load[index], layer_stats.load.numpy(), atol=1e-6)
        assert metrics[f"routing/layer{index}/entropy"] == pytest.approx(layer_stats.entropy.item())
        assert metrics[f"routing/layer{index}/dropped_fraction"] == 0.0  # eval mode is dropless
    assert all(not layer.router._forward_hooks for layer in model.moe_layers())


def analyse(model, tokens, tokenizer, words, out_dir):
    """The stage's analyses without snapshots, every token of one domain."""
    return analyse_routing(
        model,
        RoutingWindows(tokens, 32, TOKENS, 4, CPU),
        EvaluateConfig(routing_vocab_min_count=3),
        snapshots={},
        tok_bytes=token_bytes(tokenizer),
        words=words,
        domains=TokenDomains(("all",), np.zeros(len(tokens), dtype=np.int64)),
        out_dir=out_dir,
    )


def test_report_files(model, tokens, tokenizer, words, tmp_path):
    metrics = analyse(model, tokens, tokenizer, words, tmp_path)
    pngs = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.png"))
    assert pngs == [
        "coactivation/layer0.png",
        "coactivation/layer1.png",
        "expert_load.png",
        "specialisation/layer0.png",
        "specialisation/layer1.png",
        "vocabulary/vocabulary.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in tmp_path.rglob("*.png"))
    with open(tmp_path / "expert_load.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 4
    for layer in ("0", "1"):
        assert sum(float(r["load"]) for r in rows if r["layer"] == layer) == pytest.approx(1.0)
    with open(tmp_path / "specialisation" / "specialisation.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * len(CATEGORIES) * 4
    assert metrics["routing/tokens"] == TOKENS
    assert sum(metrics[f"routing/tokens/{c}"] for c in CATEGORIES) == TOKENS
    # one domain, no snapshot: those analyses leave their directories empty
    assert not any((tmp_path / "domains").iterdir())
    assert not any((tmp_path / "saturation").iterdir())
    assert not any(key.startswith(("routing/domains", "routing/saturation")) for key in metrics)


def test_word_categories_are_skipped_where_the_corpus_tags_no_words(
    model, tokens, tokenizer, words, tmp_path
):
    analyse(model, tokens, tokenizer, words, tmp_path)  # a run with categories first
    no_words = WordCategories(re.compile(r"[A-Za-z]+"), {})
    metrics = analyse(model, tokens, tokenizer, no_words, tmp_path)
    assert not any((tmp_path / "specialisation").iterdir())  # the earlier run's files are gone
    assert not any(key.startswith("routing/tokens/") for key in metrics)
    assert (tmp_path / "expert_load.png").is_file()
    assert (tmp_path / "vocabulary" / "vocabulary.png").is_file()
