"""The 13-gram contamination check against a plain-Python oracle on random texts."""

from __future__ import annotations

import os
import random

import pytest

from pipeline.data.contamination import NGRAM, ItemWindows, contamination_rates, words

SEED = int(os.environ["MOE_TEST_SEED"])  # tests/conftest.py: one per session
VOCAB = [f"w{i}" for i in range(40)]


def oracle(items: list[str], documents: list[str]) -> set[int]:
    """Dirty items by brute force: the GPT-3 rule over word tuples."""
    dirty = set()
    for index, text in enumerate(items):
        item = words(text)
        n = min(NGRAM, len(item))
        windows = {tuple(item[i : i + n]) for i in range(len(item) - n + 1)}
        for doc in documents:
            doc_words = words(doc)
            if any(tuple(doc_words[i : i + n]) in windows for i in range(len(doc_words) - n + 1)):
                dirty.add(index)
    return dirty


def random_text(rng: random.Random, length: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(length))


@pytest.mark.parametrize("trial", range(3))
def test_dirty_items_match_the_oracle(trial):
    rng = random.Random(SEED + trial)
    documents = [random_text(rng, rng.randint(5, 60)) for _ in range(40)]
    items = [random_text(rng, rng.randint(3, 30)) for _ in range(30)]
    for doc in rng.sample(documents, 5):  # plant copies: whole 13-grams and short items
        start = rng.randint(0, max(len(doc.split()) - 15, 0))
        items.append(" ".join(doc.split()[start : start + 15]))
        items.append(" ".join(doc.split()[:4]))
    batches = [documents[i : i + 7] for i in range(0, len(documents), 7)]
    got = ItemWindows(items).dirty(batches)
    assert got == oracle(items, documents), f"seed {SEED + trial}"
    assert got, "the planted copies must be found"


def test_windows_do_not_cross_documents_and_case_and_punctuation_are_ignored():
    half = " ".join(VOCAB[:7])
    other = " ".join(VOCAB[7:13])
    item = f"{half} {other}"  # 13 words
    assert ItemWindows([item]).dirty([[half, other]]) == set()  # split over two documents
    assert ItemWindows([item.upper()]).dirty([[f"{half}, {other}!"]]) == {0}


def test_rates_per_set_in_one_pass():
    documents = [[" ".join(VOCAB[:20])]]
    sets = {"a": [" ".join(VOCAB[:13]), "nothing here"], "b": ["w1 w2 w3"]}
    assert contamination_rates(sets, documents) == {"a": 0.5, "b": 1.0}
