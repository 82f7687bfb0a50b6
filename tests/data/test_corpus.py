"""Cleaning and splitting: normalisation, de-duplication within and across units, hash split,
Parquet shards, statistics, empty corpora."""

from __future__ import annotations

import hashlib
import unicodedata

import pyarrow.parquet as pq
import pytest

from pipeline.config import FilesSource, PrepareConfig, SplitFractions
from pipeline.data.corpus import assign_split, clean_unit, merge_units, normalise
from pipeline.data.prepared import read_prepared
from pipeline.data.sources import DataError, Document
from pipeline.paths import SPLITS

CFG = PrepareConfig(min_chars=10, split=SplitFractions(validation=0.2, test=0.2))


def run_split(tmp_path, texts: list[str], cfg: PrepareConfig = CFG, units: int = 1):
    """Clean ``texts`` cut into ``units`` consecutive units, merge; return the statistics and
    each split's documents as ``(text, domain)`` in shard order."""
    size = -(-len(texts) // units)
    results = []
    for u in range(units):
        chunk = texts[u * size : (u + 1) * size]
        docs = (Document(t, f"t:{i}", f"d{i % 3}") for i, t in enumerate(chunk))
        directory = tmp_path / f"unit-{u}"
        results.append((directory, clean_unit(cfg, docs, directory)))
    out = {s: tmp_path / "out" / s for s in SPLITS}
    for directory in out.values():
        directory.mkdir(parents=True)
    stats = merge_units(cfg, results, out)
    contents = {}
    for split, directory in out.items():
        rows = []
        for shard in read_prepared(directory).shards:
            table = pq.read_table(shard.path)
            texts, labels = table.column("text").to_pylist(), table.column("domain").to_pylist()
            rows += zip(texts, labels, strict=True)
        contents[split] = rows
    return stats.to_json({s: out[s] / "manifest.json" for s in SPLITS}), contents


def corpus(n: int) -> list[str]:
    return [f"document {i} says something long enough" for i in range(n)]


def texts_of(contents, split: str) -> list[str]:
    return [text for text, _ in contents[split]]


def test_nfc_normalisation_and_strip():
    decomposed = "  Cafe\u0301 au lait \n"
    assert normalise(decomposed, "NFC") == "Caf\u00e9 au lait"
    assert unicodedata.is_normalized("NFC", normalise(decomposed, "NFC"))
    assert normalise(decomposed, "none") == "Cafe\u0301 au lait"


@pytest.mark.parametrize("units", [1, 3])
def test_dedup_short_drop_and_stats(tmp_path, units):
    texts = [*corpus(200), "short", corpus(1)[0], " " + corpus(2)[1] + " "]
    stats, contents = run_split(tmp_path, texts, units=units)
    assert stats["documents_read"] == 203
    assert stats["too_short_removed"] == 1
    assert stats["duplicates_removed"] == 2  # exact copy, and a copy equal after stripping
    kept = [t for split in SPLITS for t in texts_of(contents, split)]
    assert sorted(kept) == sorted(corpus(200))
    for split in SPLITS:
        assert stats["splits"][split]["documents"] == len(contents[split])
        assert stats["splits"][split]["bytes"] == sum(
            len(t.encode()) for t in texts_of(contents, split)
        )


def test_units_give_the_same_documents_as_one(tmp_path):
    """The duplicates span units here (the copies sit at the end): the merge drops them and the
    result equals one unit's, document for document."""
    texts = [*corpus(300), *corpus(40)]
    one = run_split(tmp_path / "one", texts)
    three = run_split(tmp_path / "three", texts, units=3)
    assert one[1] == three[1]
    assert one[0]["duplicates_removed"] == three[0]["duplicates_removed"] == 40


def test_documents_keep_source_order_and_domain(tmp_path):
    _, contents = run_split(tmp_path, corpus(300))
    for split in SPLITS:
        numbers = [int(text.split()[1]) for text, _ in contents[split]]
        assert numbers == sorted(numbers)
        assert all(
            domain == f"d{n % 3}" for n, (_, domain) in zip(numbers, contents[split], strict=True)
        )


def test_split_is_by_content_not_order(tmp_path):
    _, forward = run_split(tmp_path / "a", corpus(300))
    _, backward = run_split(tmp_path / "b", corpus(300)[::-1])
    for split in SPLITS:
        assert sorted(texts_of(forward, split)) == sorted(texts_of(backward, split))
    # A document's split depends only on its hash, so it is stable when the corpus grows.
    _, grown = run_split(tmp_path / "c", corpus(600))
    assert set(texts_of(forward, "test")) <= set(texts_of(grown, "test"))


def test_split_fractions_roughly_honoured(tmp_path):
    stats, _ = run_split(tmp_path, corpus(2000))
    fractions = {s: stats["splits"][s]["documents"] / 2000 for s in SPLITS}
    # binomial stderr at n=2000, p=0.2 is 0.009: 0.04 is over 4 sigma
    assert abs(fractions["validation"] - 0.2) < 0.04 and abs(fractions["test"] - 0.2) < 0.04


def test_shards_roll_over_at_shard_mb_and_are_numbered_in_order(tmp_path):
    cfg = CFG.model_copy(update={"shard_mb": 0.002})  # ~2 KB of text per shard
    stats, contents = run_split(tmp_path, corpus(400), cfg, units=2)
    train = read_prepared(tmp_path / "out" / "train")
    assert len(train.shards) == stats["splits"]["train"]["shards"] > 4
    assert [s.path.name for s in train.shards] == [
        f"train-{i:05d}.parquet" for i in range(len(train.shards))
    ]
    assert all(s.bytes < 2000 + 60 for s in train.shards)  # a part closes at the first doc over
    numbers = [int(text.split()[1]) for text in texts_of(contents, "train")]
    assert numbers == sorted(numbers)


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
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_too_small_for_the_splits(tmp_path):
    with pytest.raises(DataError, match=r"split '(validation|test)' is empty") as info:
        run_split(tmp_path, corpus(2))
    assert "split_txt" not in str(info.value)  # not a files source: no .txt option to name
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]


def test_too_few_documents_from_txt_files_names_the_option(tmp_path):
    cfg = CFG.model_copy(update={"source": "files", "files": FilesSource(glob="x/*.txt")})
    with pytest.raises(DataError, match=r"prepare.files.split_txt: paragraphs"):
        run_split(tmp_path, corpus(1), cfg)
