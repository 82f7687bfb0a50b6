"""The trained model's files: written as the train stage writes them, read back by
export, evaluate and card."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from pipeline.config import ModelConfig
from pipeline.model import MoETransformer
from pipeline.model_io import ModelLoadError, load_model, model_identity, save_model
from pipeline.paths import ModelFiles

TINY = ModelConfig.model_validate({
    "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "dense_hidden": 64,
    "max_seq_len": 32, "init_std": 0.2, "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
})  # fmt: skip


@pytest.fixture
def model_config() -> ModelConfig:
    return TINY


@pytest.fixture
def model() -> MoETransformer:
    torch.manual_seed(0)
    return MoETransformer(TINY, 60).eval()


def export(model: MoETransformer, models_dir) -> None:
    save_model(model, model_identity(model.cfg, model.vocab_size), ModelFiles.in_dir(models_dir))


def test_round_trip_gives_the_same_logits_in_eval_mode(model, tmp_path):
    export(model, tmp_path)
    loaded = load_model(ModelFiles.in_dir(tmp_path))
    assert not loaded.training and loaded.cfg == model.cfg
    idx = torch.randint(0, model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(loaded(idx).logits, model(idx).logits)


def test_another_format_is_refused(model, tmp_path):
    export(model, tmp_path)
    config = tmp_path / "model_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "format": "other/9"}))
    with pytest.raises(
        ModelLoadError, match=r"format 'other/9', expected 'moe-pipeline-weights/1'"
    ):
        load_model(ModelFiles.in_dir(tmp_path))


def test_missing_weights_name_the_stage(tmp_path):
    with pytest.raises(
        ModelLoadError, match=r"model_config.json: not found \(run the train stage\)"
    ):
        load_model(ModelFiles.in_dir(tmp_path))


def test_expert_choice_is_evaluated_with_token_choice_and_says_so(model_config, tmp_path, caplog):
    cfg = model_config.model_copy(
        update={"moe": model_config.moe.model_copy(update={"router": "expert_choice"})}
    )
    export(MoETransformer(cfg, 50), tmp_path)
    with caplog.at_level(logging.WARNING, logger="pipeline.model_io"):
        loaded = load_model(ModelFiles.in_dir(tmp_path))
    assert "not causal" in caplog.text
    idx = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # causal: a prefix's logits do not depend on the tokens after it
        assert torch.allclose(loaded(idx[:, :6]).logits, loaded(idx).logits[:, :6], atol=1e-5)


def test_the_same_weights_load_under_another_backend(model, tmp_path):
    """The backend is a runtime choice, not part of the files: reference and torch load the same
    weights and compute the same function."""
    export(model, tmp_path)
    idx = torch.randint(0, model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits = [
            load_model(ModelFiles.in_dir(tmp_path), backend=b)(idx).logits
            for b in ("reference", "torch")
        ]
    # fp32: per-expert loops vs grouped GEMMs, the same arithmetic in another order.
    torch.testing.assert_close(logits[0], logits[1], rtol=1e-5, atol=1e-5)
