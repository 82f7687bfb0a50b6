"""Tiny export inputs: a byte-level BPE tokenizer saved by the tokenize stage's own writer, and
randomly initialised tiny models of the configs the export supports or refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import ModelConfig, TokenizeConfig
from pipeline.data.synthetic import generate_documents
from pipeline.data.tokenizer import save_tokenizer, train_tokenizer
from pipeline.model import MoETransformer

TOKENIZE = TokenizeConfig(vocab_size=320)
TINY = {
    "d_model": 32,
    "n_layers": 3,
    "n_heads": 4,
    "n_kv_heads": 2,
    "dense_hidden": 48,
    "max_seq_len": 24,
    "init_std": 0.2,  # peaky logits: greedy decoding does not hinge on near-ties
    "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 16},
}


def tiny_config(**overrides) -> ModelConfig:
    """``TINY`` with top-level overrides; ``moe`` overrides are merged into ``TINY["moe"]``."""
    moe = {**TINY["moe"], **overrides.pop("moe", {})}
    return ModelConfig.model_validate({**TINY, **overrides, "moe": moe})


def tiny_model(cfg: ModelConfig, vocab_size: int, seed: int = 0) -> MoETransformer:
    torch.manual_seed(seed)
    return MoETransformer(cfg, vocab_size).eval()


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-tokenizer")
    texts = generate_documents(5, 0.02, episode_share=0.3)
    out = root / "tokenizer"
    save_tokenizer(train_tokenizer(texts, TOKENIZE), TOKENIZE, out)
    return out


@pytest.fixture(scope="session")
def vocab_size(tokenizer_dir) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
