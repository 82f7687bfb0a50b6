"""Tiny evaluation inputs built with the real writers: prepared splits of a few synthetic
documents labelled by kind, a byte-level BPE tokenizer and token splits (tokenize stage code),
the dev and test benchmark files with their digests (prepare stage code), and a randomly
initialised tiny MoE model exported the way training exports it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from pipeline.config import ModelConfig, TokenizeConfig
from pipeline.data.digests import record_digests
from pipeline.data.prepared import iter_texts, read_prepared, write_prepared
from pipeline.data.synthetic import (
    WORD_PATTERN,
    labelled_documents,
    word_categories,
    write_benchmark_sets,
)
from pipeline.data.tokenizer import encode_split, save_tokenizer, train_tokenizer
from pipeline.data.word_categories import WordCategories, write_word_categories
from pipeline.model import MoETransformer
from pipeline.paths import Paths

TOKENIZE = TokenizeConfig(vocab_size=400)
BENCHMARK_ITEMS = 6
TINY_MODEL = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 1,
    "dense_hidden": 64,
    "max_seq_len": 64,  # the longest agreement sentence (~40 tokens at this vocabulary) fits
    "init_std": 0.2,  # peakier than a trained model's start: argmax and ranking tests bite
    "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
}


def build_data(root: Path) -> Paths:
    """Prepared splits, tokenizer, validation/test token splits, benchmark and word-category
    files under ``root``."""
    paths = Paths(root=root)
    docs = [(text, kind) for kind, text in labelled_documents(11, 0.03, episode_share=0.3)]
    splits = {"train": docs[:-12], "validation": docs[-12:-6], "test": docs[-6:]}
    for split, documents in splits.items():
        write_prepared(paths.prepared_split(split), split, [documents])
    tokenizer = train_tokenizer([text for text, _ in splits["train"]], TOKENIZE)
    save_tokenizer(tokenizer, TOKENIZE, paths.tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(paths.tokenizer_file))
    for split in splits:
        prepared = read_prepared(paths.prepared_split(split))
        encode_split(tokenizer, prepared, paths.token_split(split), TOKENIZE)
    train = read_prepared(paths.prepared_split("train"))
    sizes = {"dev": BENCHMARK_ITEMS, "test": BENCHMARK_ITEMS}
    write_benchmark_sets(11, sizes, paths, training_text=lambda: iter_texts(train, 64))
    record_digests(paths.benchmarks_dir)
    write_word_categories(paths.word_categories, WordCategories(WORD_PATTERN, word_categories()))
    return paths


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    return build_data(tmp_path_factory.mktemp("eval-data")).root


@pytest.fixture(scope="session")
def tokenizer(data_root) -> Tokenizer:
    return Tokenizer.from_file(str(Paths(root=data_root).tokenizer_file))


@pytest.fixture(scope="session")
def model_config() -> ModelConfig:
    return ModelConfig.model_validate(TINY_MODEL)


@pytest.fixture(scope="session")
def model(model_config, tokenizer) -> MoETransformer:
    """A tiny randomly initialised model (seeded), in eval mode."""
    torch.manual_seed(0)
    return MoETransformer(model_config, tokenizer.get_vocab_size()).eval()
