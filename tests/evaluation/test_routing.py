"""Routing analysis on a tiny random model: consistent counts, the model's own statistics, files."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import torch

from evaluation.categories import CATEGORIES
from evaluation.routing import analyse_routing
from evaluation.token_bytes import token_bytes
from pipeline.data.shards import open_tokens
from pipeline.data.word_categories import WordCategories, read_word_categories
from pipeline.paths import Paths

CPU = torch.device("cpu")
TOKENS = 200  # not a multiple of the 32-token window: a partial last window too


@pytest.fixture(scope="module")
def report(data_root, tokenizer, model):
    paths = Paths(root=data_root)
    tokens, _ = open_tokens(paths.tokens("test"))
    words = read_word_categories(paths.word_categories)  # what the prepare stage writes
    return analyse_routing(model, tokens, token_bytes(tokenizer), words, 32, TOKENS, 4, CPU)


def test_counts_add_up(report, model):
    assert sorted(report.layers) == [0, 1]
    assert report.tokens == TOKENS
    assert report.category_tokens.sum() == TOKENS
    top_k = model.cfg.moe.top_k
    for layer in report.layers.values():
        assert layer.tokens == TOKENS
        assert layer.assignments.sum() == TOKENS * top_k
        # per category: each token sends k assignments
        assert np.array_equal(layer.assignments.sum(1), report.category_tokens * top_k)
        assert layer.load.sum() == pytest.approx(1.0)
        rows = layer.specialisation().sum(1)
        assert np.allclose(rows[report.category_tokens > 0], 1.0)
        assert np.all(rows[report.category_tokens == 0] == 0)


def test_the_synthetic_text_has_word_categories(report):
    counts = dict(zip(CATEGORIES, report.category_tokens.tolist(), strict=True))
    for category in ("noun", "verb", "name", "function", "punctuation"):
        assert counts[category] > 0, counts


def test_load_and_entropy_match_the_model_statistics(data_root, tokenizer, model):
    """One batch: the hook's ids give the load the model itself reports for that forward."""
    tokens, _ = open_tokens(Paths(root=data_root).tokens("test"))
    no_words = WordCategories(re.compile(r"[A-Za-z]+"), {})
    one = analyse_routing(model, tokens, token_bytes(tokenizer), no_words, 32, 64, 4, CPU)
    inputs = torch.from_numpy(tokens[:64].astype(np.int64)).view(2, 32)
    with torch.no_grad():
        stats = model(inputs).router_stats
    for index, layer_stats in enumerate(stats):
        assert np.allclose(one.layers[index].load, layer_stats.load.numpy(), atol=1e-6)
        metrics = one.metrics()
        assert metrics[f"routing/layer{index}/entropy"] == pytest.approx(layer_stats.entropy.item())
        assert metrics[f"routing/layer{index}/dropped_fraction"] == 0.0  # eval mode is dropless
    assert all(not layer.router._forward_hooks for layer in model.moe_layers())


def test_report_files(report, tmp_path):
    pngs = report.write(tmp_path)
    assert [str(p.relative_to(tmp_path)) for p in pngs] == [
        "expert_load.png",
        "specialisation/layer0.png",
        "specialisation/layer1.png",
    ]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in pngs)
    with open(tmp_path / "expert_load.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 4
    for layer in ("0", "1"):
        assert sum(float(r["load"]) for r in rows if r["layer"] == layer) == pytest.approx(1.0)
    with open(tmp_path / "specialisation.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * len(CATEGORIES) * 4
    assert (tmp_path / "routing.json").is_file()
