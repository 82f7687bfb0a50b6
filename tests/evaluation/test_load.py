"""Loading the model the train stage exports."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from evaluation.load import ModelLoadError, load_model
from pipeline.model import MoETransformer
from pipeline.train.checkpoint import export_weights, model_identity


def export(model: MoETransformer, models_dir) -> None:
    identity = model_identity(model.cfg, model.vocab_size)
    export_weights(
        model, identity, models_dir / "model.safetensors", models_dir / "model_config.json"
    )


def test_round_trip_gives_the_same_logits_in_eval_mode(model, tmp_path):
    export(model, tmp_path)
    loaded = load_model(tmp_path)
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
        load_model(tmp_path)


def test_missing_weights_name_the_stage(tmp_path):
    with pytest.raises(
        ModelLoadError, match=r"model_config.json: not found \(run the train stage\)"
    ):
        load_model(tmp_path)


def test_expert_choice_is_evaluated_with_token_choice_and_says_so(model_config, tmp_path, caplog):
    cfg = model_config.model_copy(
        update={"moe": model_config.moe.model_copy(update={"router": "expert_choice"})}
    )
    export(MoETransformer(cfg, 50), tmp_path)
    with caplog.at_level(logging.WARNING, logger="evaluation.load"):
        loaded = load_model(tmp_path)
    assert "not causal" in caplog.text
    idx = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():  # causal: a prefix's logits do not depend on the tokens after it
        assert torch.allclose(loaded(idx[:, :6]).logits, loaded(idx).logits[:, :6], atol=1e-5)
