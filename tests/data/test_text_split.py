"""Cutting long plain text into documents: paragraphs merged, long lines cut at sentence ends,
the same documents however the text is read."""

from __future__ import annotations

import random
import re

import pytest

from pipeline.data.text_split import cut_documents

N = 200


def paragraphs(rng: random.Random, count: int) -> str:
    """Paragraphs of 1-8 sentences, separated by blank lines (some with spaces in them)."""
    words = ["whale", "ship", "sea", "captain", "harpoon", "deck", "wind", "rope", "night"]
    out = []
    for _ in range(count):
        sentences = [
            " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + "."
            for _ in range(rng.randint(1, 8))
        ]
        out.append(" ".join(sentences))
    return "".join(p + rng.choice(["\n\n", "\n \n", "\n\n\n"]) for p in out)


def pieces(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(40, len(text) - 1)))
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("seed", range(5))
def test_documents_do_not_depend_on_how_the_text_is_read(seed):
    rng = random.Random(seed)
    text = paragraphs(rng, 60)
    whole = list(cut_documents([text], N))
    assert list(cut_documents(pieces(text, rng), N)) == whole
    assert list(cut_documents(iter(text), N)) == whole  # one character at a time


@pytest.mark.parametrize("seed", range(5))
def test_paragraphs_are_merged_and_nothing_but_whitespace_is_lost(seed):
    text = paragraphs(random.Random(seed), 60)
    docs = list(cut_documents([text], N))
    assert squeeze("".join(docs)) == squeeze(text)
    assert all(len(d) >= N for d in docs)  # no tiny document, the last one included
    assert all(len(d) <= 3 * N for d in docs)
    for doc in docs[:-1]:  # each ends at a paragraph end (or a sentence end, if none came)
        assert doc.rstrip().endswith(".")


def test_a_document_ends_at_the_first_blank_line_after_n_characters():
    first, second, third = "a" * 150 + ".", "b" * 100 + ".", "c" * 250 + "."
    docs = list(cut_documents([f"{first}\n\n{second}\n\n{third}"], N))
    assert docs == [f"{first}\n\n{second}", third]


def test_one_long_line_is_cut_after_sentence_ends():
    rng = random.Random(3)
    line = " ".join(
        " ".join(rng.choice(["the", "union", "is", "strong"]) for _ in range(rng.randint(4, 20)))
        + rng.choice([".", "!", "?"])
        for _ in range(400)
    )
    docs = list(cut_documents([line], N))
    assert len(docs) > 10 and squeeze("".join(docs)) == squeeze(line)
    assert all(d.rstrip()[-1] in ".!?" for d in docs)
    assert all(N <= len(d.rstrip()) < 2 * N for d in docs[:-1])


def test_no_sentence_end_cuts_at_whitespace_and_no_whitespace_at_2n():
    words = " ".join(["word"] * 200)
    assert all(
        not d.startswith(" ") and N <= len(d) < 2 * N for d in list(cut_documents([words], N))[:-1]
    )
    blob = "x" * (9 * N // 2)
    docs = list(cut_documents([blob], N))
    assert docs == ["x" * (2 * N), "x" * (5 * N // 2)]  # a last N/2 would be too short alone


def test_appending_text_changes_only_the_last_document():
    rng = random.Random(9)
    text = paragraphs(rng, 50)
    before = list(cut_documents([text], N))
    after = list(cut_documents([text + paragraphs(rng, 20)], N))
    assert after[: len(before) - 1] == before[:-1]


def test_short_text_is_one_document():
    assert list(cut_documents(["short.\n\nText."], N)) == ["short.\n\nText."]
    assert list(cut_documents(["   \n\n  "], N)) == []
