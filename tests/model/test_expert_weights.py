"""The experts' stacked ``w13`` parameter: initialised as the separate ``w1``/``w3`` were, and
state dicts of both older layouts (``ffn.experts.w1/w3/w2`` and, older still, ``ffn.w1/w3/w2``)
load into it exactly, with the conversion logged."""

from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_model, save_file

from pipeline.config import ModelConfig
from pipeline.model import MoETransformer
from pipeline.model.experts import GroupedExperts

CFG = ModelConfig.model_validate(
    {"d_model": 16, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "dense_hidden": 24,
     "max_seq_len": 8, "first_dense_layers": 1,
     "moe": {"num_experts": 3, "top_k": 2, "expert_hidden": 12}}
)  # fmt: skip
VOCAB = 50
MOE = "blocks.1.ffn."  # layer 0 is dense: its ffn.w1.weight must stay untouched by the hooks


def _model(seed: int) -> MoETransformer:
    torch.manual_seed(seed)
    return MoETransformer(CFG, VOCAB)


def _old_layout(model: MoETransformer, experts_prefix: str) -> dict[str, torch.Tensor]:
    """The model's state dict as an older layout stored it: ``w1, w3 (E, F, D)``, ``w2`` under
    ``experts_prefix`` (``ffn.experts.`` or, older, ``ffn.``)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    w13, w2 = state.pop(MOE + "experts.w13"), state.pop(MOE + "experts.w2")
    w1, w3 = (half.contiguous() for half in w13.chunk(2, dim=1))
    state.update({experts_prefix + "w1": w1, experts_prefix + "w3": w3, experts_prefix + "w2": w2})
    return state


def test_w13_is_drawn_as_the_separate_gate_and_up_tensors_were():
    """All gate projections, then all up projections, each one contiguous draw: a seed gives
    the weights it gave before the two were stacked (tests/train/test_golden.py relies on it)."""
    experts = GroupedExperts(num_experts=3, d_model=16, hidden=12)
    torch.manual_seed(7)
    experts.init_gate_up_(0.02)
    torch.manual_seed(7)
    w1 = torch.empty(3, 12, 16).normal_(0, 0.02)
    w3 = torch.empty(3, 12, 16).normal_(0, 0.02)
    assert torch.equal(experts.w13.detach(), torch.cat([w1, w3], dim=1))


@pytest.mark.parametrize("experts_prefix", [MOE + "experts.", MOE], ids=["experts.w1", "ffn.w1"])
def test_older_layouts_load_exactly_and_say_so(experts_prefix, caplog):
    trained = _model(seed=1)
    fresh = _model(seed=2)
    with caplog.at_level(logging.INFO, logger="pipeline.model"):
        result = fresh.load_state_dict(_old_layout(trained, experts_prefix), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    for name, want in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], want), name
    assert f"{MOE}experts.w13 (3, 24, 16) on load" in caplog.text
    if experts_prefix == MOE:
        assert f"{MOE}w1: older layout, loaded as {MOE}experts.w1" in caplog.text
    idx = torch.randint(0, VOCAB, (2, 8))
    assert torch.equal(fresh(idx).logits, trained(idx).logits)


def test_an_older_safetensors_file_loads_strictly(tmp_path):
    """The way the trained model's file is read (:func:`pipeline.model_io.load_model`)."""
    trained = _model(seed=1)
    state = _old_layout(trained, MOE + "experts.")
    state.pop("lm_head.weight")  # tied to the embedding: safetensors stores it once
    save_file(state, tmp_path / "old.safetensors")
    fresh = _model(seed=2)
    load_model(fresh, tmp_path / "old.safetensors", strict=True)
    assert torch.equal(fresh.blocks[1].ffn.experts.w13, trained.blocks[1].ffn.experts.w13)


def test_the_current_layout_loads_without_conversion(caplog):
    trained = _model(seed=1)
    fresh = _model(seed=2)
    with caplog.at_level(logging.INFO, logger="pipeline.model"):
        fresh.load_state_dict(trained.state_dict(), strict=True)
    assert "older layout" not in caplog.text
    assert torch.equal(fresh.blocks[1].ffn.experts.w13, trained.blocks[1].ffn.experts.w13)
