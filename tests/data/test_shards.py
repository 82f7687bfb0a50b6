"""The token split format: shards + manifest, the concatenated stream, domains, and every way a
split can be damaged (each refused with the file and the fix)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.data.fingerprints import FingerprintSet
from pipeline.data.shards import (
    ShardError,
    ShardWriter,
    SplitManifest,
    TokenShard,
    open_split,
    read_manifest,
    token_counts,
    unigram_entropy,
    write_manifest,
    write_split,
)

DOCS = [[[5, 6, 7], [8]], [[9, 10]], [[11], [12, 13, 14, 15]]]  # three shards of documents
FLAT = [5, 6, 7, 0, 8, 0, 9, 10, 0, 11, 0, 12, 13, 14, 15, 0]


def write(directory, docs=DOCS, **kw):
    options = {"dtype": "uint16", "vocab_size": 100, "eot_id": 0, "tokenizer_sha256": "t" * 64}
    return write_split(directory, "train", docs, **{**options, **kw})


def test_the_split_is_its_shards_concatenated(tmp_path):
    write(tmp_path)
    split = open_split(tmp_path)
    assert [s.file for s in split.shards] == [f"train-0000{i}.bin" for i in range(3)]
    assert len(split.tokens) == split.num_tokens == len(FLAT) and split.num_documents == 5
    assert np.asarray(split.tokens).tolist() == FLAT
    for a in range(len(FLAT)):  # every slice, within and across shard boundaries
        for b in range(a, len(FLAT) + 1):
            assert split.tokens[a:b].tolist() == FLAT[a:b]
    assert [int(split.tokens[i]) for i in range(-3, 3)] == FLAT[-3:] + FLAT[:3]
    positions = np.array([[15, 0, 3], [9, 4, -1]])  # a gather across shards, in its shape
    assert split.tokens[positions].tolist() == np.array(FLAT)[positions].tolist()
    assert split.tokens[np.zeros(0, dtype=np.int64)].shape == (0,)
    with pytest.raises(IndexError):
        split.tokens[len(FLAT)]
    with pytest.raises(IndexError):
        split.tokens[np.array([2, len(FLAT)])]


def test_domains_per_document_in_token_order(tmp_path):
    directory = tmp_path / "test"
    directory.mkdir()
    runs = [("sotu", 2), ("moby", 1)], [("moby", 2), ("sotu", 1)]
    shards = []
    for index, (docs, labels) in enumerate(
        zip([[[1], [2], [3]], [[4], [5, 6], [7]]], runs, strict=True)
    ):
        with ShardWriter(directory / f"test-{index:05d}.bin", "uint16", 100, 0) as out:
            out.write_documents(docs, [d for d, n in labels for _ in range(n)], text_bytes=10)
        shards.append(out.shard("src"))
    assert shards[0].domains == (("sotu", 2), ("moby", 1))
    write_split_manifest(directory, shards)
    split = open_split(directory)
    assert split.domain_runs() == [("sotu", 2), ("moby", 3), ("sotu", 1)]
    assert split.document_domains() == ["sotu", "sotu", "moby", "moby", "moby", "sotu"]
    eots = np.flatnonzero(np.asarray(split.tokens) == split.eot_id)
    assert len(eots) == len(split.document_domains())  # one end-of-text token per document


def write_split_manifest(directory, shards: list[TokenShard]) -> None:
    write_manifest(
        directory, SplitManifest(directory, "test", "uint16", 100, 0, "t", tuple(shards), "")
    )


def test_counts_and_entropy_go_shard_by_shard(tmp_path):
    write(tmp_path)
    split = open_split(tmp_path)
    assert token_counts(split).tolist() == np.bincount(FLAT, minlength=100).tolist()
    p = np.bincount(FLAT)[np.bincount(FLAT) > 0] / len(FLAT)
    assert unigram_entropy(split) == pytest.approx(float(-(p * np.log(p)).sum()))


def test_deleted_shard_is_named(tmp_path):
    write(tmp_path)
    (tmp_path / "train-00001.bin").unlink()
    with pytest.raises(ShardError, match=r"train-00001.bin: listed in .*manifest.json but missing"):
        open_split(tmp_path)


def test_truncated_shard_is_refused_even_without_hashing(tmp_path):
    write(tmp_path)
    path = tmp_path / "train-00002.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(ShardError, match=r"train-00002.bin: 12 bytes, the manifest says 14"):
        open_split(tmp_path, verify=False)


def test_altered_shard_is_refused(tmp_path):
    write(tmp_path)
    path = tmp_path / "train-00000.bin"
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"train-00000.bin: SHA-256 differs .*re-run the tokenize"):
        open_split(tmp_path)
    open_split(tmp_path, verify=False)  # the size still matches: the opt-out works


def test_shard_of_another_run_is_refused(tmp_path):
    """A shard copied in from another run, manifest untouched: its digest gives it away."""
    write(tmp_path / "a")
    write(tmp_path / "b", [[[1, 2, 3], [4]], [[9, 10]], [[11], [12, 13, 14, 15]]])
    (tmp_path / "b" / "train-00000.bin").replace(tmp_path / "a" / "train-00000.bin")
    with pytest.raises(ShardError, match=r"a/train-00000.bin: SHA-256 differs"):
        open_split(tmp_path / "a")


def test_splits_of_different_tokenizers_are_told_apart(tmp_path):
    train = read_manifest(write(tmp_path / "train").directory)
    same = read_manifest(write(tmp_path / "same").directory)
    train.check_same_tokenizer(same)
    for change in ({"vocab_size": 200}, {"tokenizer_sha256": "u" * 64}, {"eot_id": 1}):
        other = read_manifest(write(tmp_path / str(change), **change).directory)
        with pytest.raises(ShardError, match=r"was not encoded with the tokenizer of"):
            train.check_same_tokenizer(other)


def test_the_single_file_layout_is_refused_with_the_fix(tmp_path):
    (tmp_path / "train.bin").write_bytes(b"\0" * 8)
    (tmp_path / "train.json").write_text(json.dumps({"format": "moe-pipeline-tokens/1"}))
    with pytest.raises(
        ShardError,
        match=r"train.bin: a split in the single-file layout.*re-run the tokenize stage",
    ):
        open_split(tmp_path / "train")
    with pytest.raises(ShardError, match=r"manifest.json: not found \(run the tokenize stage\)"):
        open_split(tmp_path / "validation")


def test_empty_split_and_bad_manifest_are_refused(tmp_path):
    write(tmp_path / "e", [[]])
    with pytest.raises(ShardError, match=r"holds no tokens \(empty split\)"):
        open_split(tmp_path / "e")
    write(tmp_path / "m")
    (tmp_path / "m" / "manifest.json").write_text(
        json.dumps({"format": "moe-pipeline-token-split/1"})
    )
    with pytest.raises(ShardError, match=r"not a valid manifest"):
        open_split(tmp_path / "m")


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "w.bin", "uint16", 100, 0) as writer:
        writer.write_documents([[1, 2]])
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_writer_refuses_a_vocabulary_its_dtype_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match=r"vocab_size 70000 does not fit in uint16"):
        ShardWriter(tmp_path / "x.bin", "uint16", 70_000, 0)


def test_fingerprint_set_matches_a_python_set():
    rng = np.random.default_rng(0)
    seen, reference = FingerprintSet(), set()
    for _ in range(60):  # many runs, merged as they grow; values repeat across and within batches
        batch = rng.integers(0, 5000, size=int(rng.integers(1, 300))).astype(np.uint64)
        keep = seen.first_new(batch)
        expected = []
        for value in batch.tolist():
            expected.append(value not in reference)
            reference.add(value)
        assert keep.tolist() == expected
    assert len(seen) == len(reference) and seen.nbytes == 8 * len(reference)
    assert len(seen._runs) <= 12  # O(log n) runs, not one per batch
