"""Token ids back to exact bytes, and tokens to word categories."""

from __future__ import annotations

import numpy as np
import pytest

from evaluation.categories import CATEGORIES, token_categories
from evaluation.token_bytes import token_byte_lengths, token_bytes
from pipeline.data.synthetic import WORD_PATTERN
from pipeline.data.word_categories import WordCategories

TEXTS = [
    "Mia gave the ball to Tom. Tom's ball!",
    "café — naïve 😀 中文\n\ttabs",  # multi-byte characters split across byte tokens
    '  leading spaces and 123 digits, "quotes"?',
]


@pytest.mark.parametrize("text", TEXTS)
def test_token_bytes_rebuild_the_exact_utf8(tokenizer, text):
    table = token_bytes(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    assert b"".join(table[i] for i in ids) == text.encode("utf-8")
    assert token_byte_lengths(tokenizer)[ids].sum() == len(text.encode("utf-8"))


def test_special_tokens_cover_no_bytes(tokenizer):
    eot = tokenizer.token_to_id("<|endoftext|>")
    assert token_bytes(tokenizer)[eot] == b""
    assert token_byte_lengths(tokenizer)[eot] == 0


def categories_of(tokenizer, text: str, words: dict[str, str]) -> list[tuple[str, str]]:
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    labels = token_categories(ids, token_bytes(tokenizer), WordCategories(WORD_PATTERN, words))
    return [(tokenizer.decode([i]), CATEGORIES[c]) for i, c in zip(ids, labels, strict=True)]


def test_every_piece_of_a_word_takes_the_word_category(tokenizer):
    words = {"Mia": "name", "xylophones": "noun", "gave": "verb", "s": "function", "7": "number"}
    labelled = categories_of(tokenizer, "Mia gave xylophones. Mia's 7 zzz\n", words)
    assert "".join(piece for piece, _ in labelled) == "Mia gave xylophones. Mia's 7 zzz\n"
    by_category: dict[str, str] = {}
    for piece, category in labelled:
        by_category[category] = by_category.get(category, "") + piece
    assert by_category["noun"].strip() == "xylophones"  # several BPE pieces, one noun
    assert by_category["name"].split() == ["Mia", "Mia"]
    assert by_category["verb"].strip() == "gave"
    assert by_category["number"].strip() == "7"
    # The clitic is the word "s"; whether "'" is a piece of its own depends on the BPE merges.
    assert by_category["function"] in ("s", "'s")
    assert set(by_category["punctuation"]) == {"."} | ({"'"} - set(by_category["function"]))
    assert by_category["other"].strip() == "zzz"  # unknown word and the final newline


def test_one_label_per_token(tokenizer):
    ids = tokenizer.encode(TEXTS[1], add_special_tokens=False).ids
    labels = token_categories(ids, token_bytes(tokenizer), WordCategories(WORD_PATTERN, {}))
    assert labels.shape == (len(ids),) and np.all((labels >= 0) & (labels < len(CATEGORIES)))
