"""Perplexity and bits per byte: every target counted once, bytes counted exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from evaluation.perplexity import perplexity
from evaluation.token_bytes import token_byte_lengths
from evaluation.windows import window_starts
from pipeline.data.shards import open_split
from pipeline.errors import PipelineError
from pipeline.paths import Paths

CPU = torch.device("cpu")


def uniform(vocab: int):
    return lambda idx: torch.zeros(*idx.shape, vocab)


def bigram(vocab: int, seed: int = 0):
    """Logits that depend on the current token only, so a target's NLL does not depend on how
    the file is cut into windows: any windowing must give the same total."""
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed))
    return table, lambda idx: table[idx]


def test_bits_per_byte_by_hand(tokenizer):
    """Uniform logits over V: every token costs ln V nats. Text "ab<eot>c" predicted from "a":
    targets b, <eot>, c; bytes 1 + 0 + 1 = 2, so bpb = 3 ln V / ln 2 / 2 = 1.5 log2 V."""
    vocab = tokenizer.get_vocab_size()
    eot = tokenizer.token_to_id("<|endoftext|>")
    a, b, c = (tokenizer.token_to_id(ch) for ch in "abc")
    tokens = np.array([a, b, eot, c], dtype=np.uint16)
    out = perplexity(uniform(vocab), tokens, token_byte_lengths(tokenizer), 2, None, 4, CPU)
    assert out["tokens"] == 3 and out["bytes"] == 2
    assert out["nll"] == pytest.approx(math.log(vocab))
    assert out["ppl"] == pytest.approx(vocab)
    assert out["bits_per_byte"] == pytest.approx(1.5 * math.log2(vocab))


@pytest.mark.parametrize(
    ("window", "batch_size", "max_tokens"), [(32, 4, None), (7, 3, None), (5, 1, 40)]
)
def test_windowing_scores_each_target_once(data_root, tokenizer, window, batch_size, max_tokens):
    tokens = open_split(Paths(root=data_root).token_split("validation")).tokens
    table, forward = bigram(tokenizer.get_vocab_size())
    out = perplexity(
        forward, tokens, token_byte_lengths(tokenizer), window, max_tokens, batch_size, CPU
    )
    ids = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    n = len(tokens) - 1 if max_tokens is None else max_tokens
    direct = -torch.log_softmax(table[ids[:n]], -1).gather(-1, ids[1 : n + 1, None]).sum()
    assert out["tokens"] == n
    assert out["nll"] * n == pytest.approx(direct.item(), rel=1e-5)


def test_bytes_match_the_decoded_text(data_root, tokenizer):
    """Over the whole split the byte count is the decoded text's, minus the first token's."""
    header = open_split(Paths(root=data_root).token_split("test"))
    tokens = header.tokens
    out = perplexity(
        uniform(tokenizer.get_vocab_size()), tokens, token_byte_lengths(tokenizer), 32, None, 8, CPU
    )
    ids = np.asarray(tokens).astype(np.int64).tolist()
    documents, current = [], []
    for i in ids:
        if i == header.eot_id:
            documents.append(current)
            current = []
        else:
            current.append(i)
    total = sum(len(tokenizer.decode(doc).encode("utf-8")) for doc in documents)
    first = len(tokenizer.decode([ids[0]]).encode("utf-8"))
    assert out["tokens"] == header.num_tokens - 1
    assert out["bytes"] == total - first


def test_windows_cover_the_targets_without_overlap():
    spans = window_starts(num_tokens=23, window=5, max_targets=None)
    assert spans == [(0, 5), (5, 5), (10, 5), (15, 5), (20, 2)]
    assert window_starts(23, 5, 7) == [(0, 5), (5, 2)]


def test_nothing_to_predict_is_an_error(tokenizer):
    with pytest.raises(PipelineError, match="nothing to predict"):
        perplexity(
            uniform(10),
            np.array([1], dtype=np.uint16),
            np.ones(10, dtype=np.int64),
            4,
            None,
            1,
            CPU,
        )
