"""Tiny evaluation inputs built with the real writers: a byte-level BPE tokenizer and token files
from a few synthetic stories (tokenize stage code), benchmark files (prepare stage generator),
and a randomly initialised tiny MoE model exported the way training exports it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from tokenizers import Tokenizer

from pipeline.config import ModelConfig, TokenizeConfig
from pipeline.data.synthetic import (
    WORD_PATTERN,
    generate_benchmarks,
    generate_documents,
    word_categories,
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
    "max_seq_len": 32,
    "init_std": 0.2,  # peakier than a trained model's start: argmax and ranking tests bite
    "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
}


def write_parquet(path: Path, texts: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": texts}), path)


def build_data(root: Path) -> Paths:
    """Tokenizer, validation/test token files, benchmark and word-category files under
    ``root``."""
    paths = Paths(root=root)
    docs = list(generate_documents(11, 0.03, episode_share=0.3))
    splits = {"train": docs[:-12], "validation": docs[-12:-6], "test": docs[-6:]}
    for split, texts in splits.items():
        write_parquet(paths.parquet(split), texts)
    tokenizer = train_tokenizer(paths.parquet("train"), TOKENIZE)
    save_tokenizer(tokenizer, TOKENIZE, paths.tokenizer_dir)
    tokenizer = Tokenizer.from_file(str(paths.tokenizer_file))
    for split in ("validation", "test"):
        encode_split(tokenizer, paths.parquet(split), paths.tokens(split), TOKENIZE)
    paths.benchmarks_dir.mkdir(parents=True, exist_ok=True)
    for task, items in generate_benchmarks(11, BENCHMARK_ITEMS).items():
        lines = "".join(json.dumps(item) + "\n" for item in items)
        paths.benchmark(task).write_text(lines, encoding="utf-8")
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
