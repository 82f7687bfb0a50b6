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


def _safetensors_with_metadata_order(path, keys: list[str]) -> None:
    """A one-tensor safetensors file whose header lists the metadata ``keys`` in that order, as
    safetensors' own writer may (its metadata map's order is drawn per process)."""
    data = torch.arange(4, dtype=torch.float32).numpy().tobytes()
    header = {
        "__metadata__": {key: f"value of {key}" for key in keys},
        "w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    text = text.ljust(-(-len(text) // 8) * 8, b" ")
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)


def test_the_weights_header_is_canonical_whatever_order_the_writer_drew(tmp_path):
    from safetensors.torch import load_file

    from pipeline.io import canonical_safetensors

    one, other = tmp_path / "one.safetensors", tmp_path / "other.safetensors"
    _safetensors_with_metadata_order(one, ["identity", "format"])
    _safetensors_with_metadata_order(other, ["format", "identity"])
    assert one.read_bytes() != other.read_bytes()
    for path in (one, other):
        canonical_safetensors(path)
    assert one.read_bytes() == other.read_bytes()
    assert torch.equal(load_file(one)["w"], torch.arange(4, dtype=torch.float32))


def test_saved_weights_list_their_metadata_sorted(model, tmp_path):
    files = ModelFiles.in_dir(tmp_path)
    save_model(model, model_identity(model.cfg, model.vocab_size), files)
    raw = files.weights.read_bytes()
    header = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
