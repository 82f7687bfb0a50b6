"""Cleaning and splitting: normalisation, de-duplication, hash split, statistics, empty corpora."""

from __future__ import annotations

import hashlib
import unicodedata

import pyarrow.parquet as pq
import pytest

from pipeline.config import PrepareConfig, SplitFractions
from pipeline.data.corpus import assign_split, normalise, write_splits
from pipeline.data.sources import DataError, Document
from pipeline.paths import SPLITS

CFG = PrepareConfig(min_chars=10, split=SplitFractions(validation=0.2, test=0.2))


def run_split(tmp_path, texts: list[str], cfg: PrepareConfig = CFG) -> tuple[dict, dict]:
    files = {s: tmp_path / f"{s}.parquet" for s in SPLITS}
    stats = write_splits((Document(t, f"t:{i}") for i, t in enumerate(texts)), cfg, files)
    contents = {s: pq.read_table(p).column("text").to_pylist() for s, p in files.items()}
    return stats, contents


def corpus(n: int) -> list[str]:
    return [f"document {i} says something long enough" for i in range(n)]


def test_nfc_normalisation_and_strip():
    decomposed = "  Cafe\u0301 au lait \n"
    assert normalise(decomposed, "NFC") == "Caf\u00e9 au lait"
    assert unicodedata.is_normalized("NFC", normalise(decomposed, "NFC"))
    assert normalise(decomposed, "none") == "Cafe\u0301 au lait"


def test_dedup_short_drop_and_stats(tmp_path):
    texts = [*corpus(200), "short", corpus(1)[0], " " + corpus(2)[1] + " "]
    stats, contents = run_split(tmp_path, texts)
    assert stats["documents_read"] == 203
    assert stats["too_short_removed"] == 1
    assert stats["duplicates_removed"] == 2  # exact copy, and a copy equal after stripping
    kept = [t for split in SPLITS for t in contents[split]]
    assert sorted(kept) == sorted(corpus(200))
    for split in SPLITS:
        assert stats["splits"][split]["documents"] == len(contents[split])
        assert stats["splits"][split]["bytes"] == sum(len(t.encode()) for t in contents[split])


def test_split_is_by_content_not_order(tmp_path):
    _, forward = run_split(tmp_path / "a", corpus(300))
    _, backward = run_split(tmp_path / "b", corpus(300)[::-1])
    for split in SPLITS:
        assert sorted(forward[split]) == sorted(backward[split])
    # A document's split depends only on its hash, so it is stable when the corpus grows.
    _, grown = run_split(tmp_path / "c", corpus(600))
    assert set(forward["test"]) <= set(grown["test"])


def test_split_fractions_roughly_honoured(tmp_path):
    stats, _ = run_split(tmp_path, corpus(2000))
    fractions = {s: stats["splits"][s]["documents"] / 2000 for s in SPLITS}
    assert abs(fractions["validation"] - 0.2) < 0.04 and abs(fractions["test"] - 0.2) < 0.04


def test_assign_split_boundaries():
    assert assign_split(bytes(32), CFG) == "validation"
    assert assign_split(b"\xff" * 32, CFG) == "train"
    middle = int(0.3 * 2**64).to_bytes(8, "big") + bytes(24)
    assert assign_split(middle, CFG) == "test"
    digest = hashlib.sha256(b"x").digest()
    assert assign_split(digest, CFG) == assign_split(digest, CFG)


def test_empty_corpus_is_refused_and_nothing_is_written(tmp_path):
    with pytest.raises(DataError, match=r"empty corpus.*3 documents read, 3 shorter than"):
        run_split(tmp_path, ["a", "b", "c"])
    assert not any(tmp_path.iterdir())


def test_too_small_for_the_splits(tmp_path):
    with pytest.raises(DataError, match=r"split '(validation|test)' is empty"):
        run_split(tmp_path, corpus(2))
    assert not list(tmp_path.glob("*.parquet"))
