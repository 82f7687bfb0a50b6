"""BPE training, encoding into token files, and the token file format's self-checks."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tokenizers import Tokenizer

from pipeline.config import TokenizeConfig
from pipeline.data.shards import ShardError, ShardWriter, open_tokens, read_header, unigram_entropy
from pipeline.data.tokenizer import encode_split, save_tokenizer, train_tokenizer

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
def train_file(tmp_path_factory):
    rng = random.Random(7)
    words = ["the", "cat", "sat", "on", "mat", "dog", "ran", "home", "naïve", "日本", "😀"]
    docs = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(300)]
    path = tmp_path_factory.mktemp("tok") / "train.parquet"
    pq.write_table(pa.table({"text": docs}), path)
    return path


@pytest.fixture(scope="module")
def tokenizer(train_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("tokdir") / "tokenizer"
    save_tokenizer(train_tokenizer(train_file, CFG), CFG, out)
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


def test_loads_in_transformers(tokenizer, tmp_path, train_file):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    save_tokenizer(train_tokenizer(train_file, CFG), CFG, tmp_path / "tok")
    hf = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf.eos_token == "<|endoftext|>"
    text = "the naïve cat 😀 sat"
    assert hf(text)["input_ids"] == tokenizer.encode(text, add_special_tokens=False).ids


def test_training_is_deterministic(train_file, tmp_path):
    for name in ("a", "b"):
        save_tokenizer(train_tokenizer(train_file, CFG), CFG, tmp_path / name)
    assert (tmp_path / "a" / "tokenizer.json").read_bytes() == (
        tmp_path / "b" / "tokenizer.json"
    ).read_bytes()


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_encode_split_matches_per_document_encoding(tokenizer, train_file, tmp_path, dtype):
    cfg = TokenizeConfig(vocab_size=400, batch_size=7, token_dtype=dtype)
    header, text_bytes = encode_split(tokenizer, train_file, tmp_path / "train.bin", cfg)
    tokens, on_disk = open_tokens(tmp_path / "train.bin")
    assert on_disk == header == read_header(tmp_path / "train.bin")
    assert tokens.dtype == np.dtype(dtype)
    docs = pq.read_table(train_file).column("text").to_pylist()
    expected = []
    for doc in docs:
        expected += tokenizer.encode(doc, add_special_tokens=False).ids + [0]
    assert tokens.tolist() == expected
    assert header.num_documents == len(docs) and header.num_tokens == len(expected)
    assert text_bytes == sum(len(d.encode()) for d in docs)


def write_shard(path, docs, dtype="uint16", vocab=1000):
    with ShardWriter(path, dtype, vocab, eot_id=0) as writer:
        writer.write_documents(docs)
    return writer.header()


def test_truncated_shard_is_refused(tmp_path):
    write_shard(tmp_path / "s.bin", [[5, 6, 7], [8]])
    data = (tmp_path / "s.bin").read_bytes()
    (tmp_path / "s.bin").write_bytes(data[:-2])
    with pytest.raises(
        ShardError, match=r"s.bin: 10 bytes, header says 6 uint16 tokens = 12 bytes"
    ):
        open_tokens(tmp_path / "s.bin")


def test_corrupted_shard_is_refused(tmp_path):
    write_shard(tmp_path / "s.bin", [[5, 6, 7], [8]])
    data = bytearray((tmp_path / "s.bin").read_bytes())
    data[3] ^= 0xFF
    (tmp_path / "s.bin").write_bytes(bytes(data))
    with pytest.raises(ShardError, match="SHA-256 does not match"):
        open_tokens(tmp_path / "s.bin")
    open_tokens(tmp_path / "s.bin", verify_checksum=False)  # size still matches: opt-out works


def test_missing_header_and_failed_write_leave_nothing(tmp_path):
    with pytest.raises(ShardError, match="token header not found"):
        open_tokens(tmp_path / "none.bin")
    with pytest.raises(RuntimeError), ShardWriter(tmp_path / "w.bin", "uint16", 100, 0) as writer:
        writer.write_documents([[1, 2]])
        raise RuntimeError("killed mid-write")
    assert list(tmp_path.iterdir()) == []


def test_vocab_must_fit_dtype(tmp_path):
    with pytest.raises(ValueError, match="does not fit in uint16"):
        ShardWriter(tmp_path / "x.bin", "uint16", 70_000, 0)


@pytest.mark.parametrize(
    ("docs", "expected"),
    [
        ([[1, 2, 3]], np.log(4)),
        ([[5, 5, 5, 5, 5, 5, 7]], -(6 / 8) * np.log(6 / 8) - 2 * (1 / 8) * np.log(1 / 8)),
    ],
    ids=["uniform", "skewed"],
)
def test_unigram_entropy_counts_every_token_including_end_of_text(tmp_path, docs, expected):
    with ShardWriter(tmp_path / "u.bin", "uint16", 16, eot_id=0) as writer:
        writer.write_documents(docs)  # each document is followed by the eot token 0
    assert unigram_entropy(tmp_path / "u.bin") == pytest.approx(expected)
