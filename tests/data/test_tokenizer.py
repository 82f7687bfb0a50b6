"""BPE training, the saved tokenizer's digests, and encoding a prepared shard into a token shard."""

from __future__ import annotations

import random
import shutil

import numpy as np
import pytest
from tokenizers import Tokenizer

from pipeline.config import TokenizeConfig
from pipeline.data.digests import verify_digests
from pipeline.data.prepared import read_prepared, write_prepared
from pipeline.data.shards import SplitManifest, open_split, write_manifest
from pipeline.data.tokenizer import encode_shard, save_tokenizer, train_tokenizer, training_texts
from pipeline.errors import PipelineError

CFG = TokenizeConfig(vocab_size=400, batch_size=7)


def random_unicode(rng: random.Random, length: int) -> str:
    """Text from mixed scripts, emoji, combining marks and whitespace (not just ASCII)."""
    ranges = [
        (0x20, 0x7E),
        (0xA0, 0x24F),
        (0x370, 0x3FF),
        (0x400, 0x4FF),
        (0x4E00, 0x4FFF),
        (0x1F600, 0x1F64F),
        (0x300, 0x36F),
        (0x600, 0x6FF),
    ]
    chars = []
    for _ in range(length):
        lo, hi = rng.choice(ranges)
        chars.append(chr(rng.randint(lo, hi)))
        if rng.random() < 0.1:
            chars.append(rng.choice([" ", "\n", "\t", "  "]))
    return "".join(chars)


@pytest.fixture(scope="module")
def train_split(tmp_path_factory):
    """A prepared train split of two shards, documents of two domains."""
    rng = random.Random(7)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "home", "naïve", "日本", "😀"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(300)]
    labelled = [(d, "pets" if i < 180 else "home") for i, d in enumerate(docs)]
    directory = tmp_path_factory.mktemp("prepared") / "train"
    return write_prepared(directory, "train", [labelled[:100], labelled[100:]])


def texts_of(split) -> list[str]:
    return list(training_texts(split, TokenizeConfig()))


@pytest.fixture(scope="module")
def tokenizer(train_split, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokdir") / "tokenizer"
    save_tokenizer(train_tokenizer(texts_of(train_split), CFG), CFG, out)
    return Tokenizer.from_file(str(out / "tokenizer.json"))


def test_round_trip_on_random_unicode(tokenizer):
    rng = random.Random(0)
    for _ in range(50):
        text = random_unicode(rng, rng.randint(1, 200))
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        assert tokenizer.decode(ids, skip_special_tokens=False) == text


def test_vocab_and_special_token(tokenizer):
    assert tokenizer.get_vocab_size() <= CFG.vocab_size
    assert tokenizer.token_to_id("<|endoftext|>") == 0
    assert tokenizer.encode("<|endoftext|>", add_special_tokens=False).ids == [0]


def test_loads_in_transformers(tokenizer, tmp_path, train_split):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    save_tokenizer(train_tokenizer(texts_of(train_split), CFG), CFG, tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.eos_token == "<|endoftext|>"
    text = "the naïve cat 😀 sat"
    assert hf(text)["input_ids"] == tokenizer.encode(text, add_special_tokens=False).ids


def test_training_is_deterministic(train_split, tmp_path):
    for name in ("a", "b"):
        save_tokenizer(train_tokenizer(texts_of(train_split), CFG), CFG, tmp_path / name)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


def test_training_texts_stop_at_train_max_mb(train_split):
    everything = texts_of(train_split)
    budget = sum(len(t.encode()) for t in everything[:50]) / 1e6
    capped = list(training_texts(train_split, TokenizeConfig(train_max_mb=budget)))
    assert capped == everything[:50]


def test_saved_tokenizer_records_its_digests(train_split, tmp_path):
    out = tmp_path / "tok"
    save_tokenizer(train_tokenizer(texts_of(train_split), CFG), CFG, out)
    verify_digests(out, "tokenize")
    data = bytearray((out / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "tokenizer.json").write_bytes(bytes(data))
    with pytest.raises(
        PipelineError, match=r"tokenizer.json: SHA-256 differs .* re-run the tokenize"
    ):
        verify_digests(out, "tokenize")


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_encode_shard_matches_per_document_encoding(tokenizer, train_split, tmp_path, dtype):
    cfg = TokenizeConfig(vocab_size=400, batch_size=7, token_dtype=dtype)
    shards = [
        encode_shard(tokenizer, source, tmp_path / f"train-{i:05d}.bin", cfg)
        for i, source in enumerate(train_split.shards)
    ]
    template = SplitManifest(
        tmp_path, "train", dtype, tokenizer.get_vocab_size(), 0, "t", tuple(shards), ""
    )
    write_manifest(tmp_path, template)
    split = open_split(tmp_path)
    assert split.tokens.dtype == np.dtype(dtype)
    docs = texts_of(train_split)
    expected = []
    for doc in docs:
        expected += tokenizer.encode(doc, add_special_tokens=False).ids + [0]
    assert np.asarray(split.tokens).tolist() == expected
    assert split.num_documents == len(docs) and split.num_tokens == len(expected)
    assert sum(s.text_bytes for s in shards) == sum(len(d.encode()) for d in docs)
    assert [s.source_sha256 for s in shards] == [s.sha256 for s in train_split.shards]
    assert split.domain_runs() == [("pets", 180), ("home", 120)]  # runs merged across shards
    assert shards[1].domains == (("pets", 80), ("home", 120))


def test_encoding_an_altered_prepared_shard_is_refused(tokenizer, train_split, tmp_path):
    copy = tmp_path / "train"
    shutil.copytree(train_split.directory, copy)
    source = read_prepared(copy).shards[0]
    data = bytearray(source.path.read_bytes())
    data[len(data) // 2] ^= 0x01
    source.path.write_bytes(bytes(data))
    with pytest.raises(
        PipelineError, match=r"train-00000.parquet: SHA-256 differs .*re-run the prepare"
    ):
        encode_shard(tokenizer, source, tmp_path / "x.bin", CFG)
    assert not (tmp_path / "x.bin").exists()
