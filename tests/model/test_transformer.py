"""The model: causality, parameter counts, untrained loss, outputs, generation, FLOPs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig, MoEConfig
from pipeline.model import MoELayer, MoETransformer, is_moe_layer

VOCAB = 97


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from threads; avoids OpenMP stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _cfg(moe=None, **model) -> ModelConfig:
    base = {"d_model": 32, "n_layers": 3, "n_heads": 4, "n_kv_heads": 2, "dense_hidden": 48,
            "max_seq_len": 24}  # fmt: skip
    moe = {"num_experts": 4, "top_k": 2, "expert_hidden": 16, **(moe or {})}
    return ModelConfig(**{**base, **model, "moe": MoEConfig(**moe)})


def _model(cfg: ModelConfig, seed: int = 0) -> MoETransformer:
    torch.manual_seed(seed)
    return MoETransformer(cfg, VOCAB)


def _idx(b=2, length=16, seed=1):
    return torch.randint(0, VOCAB, (b, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_bias"])
@pytest.mark.parametrize("training", [False, True])
def test_changing_a_future_token_leaves_earlier_logits_unchanged(router, training):
    model = _model(_cfg(moe={"router": router}, first_dense_layers=1)).train(training)
    idx = _idx()
    changed = idx.clone()
    changed[:, 10] = (changed[:, 10] + 1) % VOCAB
    a, b = model(idx).logits, model(changed).logits
    torch.testing.assert_close(a[:, :10], b[:, :10], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 10:], b[:, 10:]), "the change must be visible from there on"


def _manual_count(cfg: ModelConfig, vocab: int) -> tuple[int, int]:
    d, m = cfg.d_model, cfg.moe
    kv = cfg.n_kv_heads * d // cfg.n_heads
    attn = d * d + 2 * d * kv + d * d + (2 * d // cfg.n_heads if cfg.qk_norm else 0)
    expert = 3 * d * m.expert_hidden
    moe_ffn = m.num_experts * d + m.num_experts * expert + m.num_shared_experts * expert
    dense_ffn = 3 * d * cfg.dense_hidden
    n_moe = sum(is_moe_layer(cfg, i) for i in range(cfg.n_layers))
    n_dense = cfg.n_layers - n_moe
    total = vocab * d * (1 if cfg.tie_embeddings else 2) + d  # embeddings (+ head) + final norm
    total += cfg.n_layers * (attn + 2 * d) + n_moe * moe_ffn + n_dense * dense_ffn
    active = total - n_moe * (m.num_experts - m.top_k) * expert
    return total, active


@pytest.mark.parametrize(
    "cfg",
    [
        _cfg(),
        _cfg(tie_embeddings=False, qk_norm=False),
        _cfg(
            moe={"num_shared_experts": 2, "num_experts": 8, "top_k": 3},
            n_layers=4,
            first_dense_layers=1,
            moe_every=2,
        ),  # fmt: skip
    ],
)
def test_num_params_matches_a_count_from_the_config(cfg):
    total, active = _manual_count(cfg, VOCAB)
    assert _model(cfg).num_params() == {"total": total, "active": active}


def test_moe_layer_placement():
    cfg = _cfg(n_layers=6, first_dense_layers=1, moe_every=2)
    model = _model(cfg)
    kinds = [isinstance(b.ffn, MoELayer) for b in model.blocks]
    assert kinds == [False, True, False, True, False, True]


def test_untrained_loss_is_about_ln_vocab():
    model = _model(_cfg()).eval()
    logits = model(_idx(b=4)).logits
    targets = _idx(b=4, seed=2)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    assert abs(loss.item() - math.log(VOCAB)) < 0.05


def test_output_shapes_aux_loss_and_router_stats():
    cfg = _cfg(first_dense_layers=1)
    model = _model(cfg).train()
    out = model(_idx())
    assert out.logits.shape == (2, 16, VOCAB)
    assert out.aux_loss.dim() == 0 and out.aux_loss.requires_grad
    assert len(out.router_stats) == 2
    for stats in out.router_stats:
        assert stats.load.shape == (4,)
        assert stats.load.sum().item() == pytest.approx(1.0)
        assert set(stats.losses) == {"load_balance", "z_loss"}  # seq_balance: weight 0
        assert 0 < stats.entropy.item() <= math.log(4) + 1e-6
    w = cfg.moe
    expected = sum(
        w.aux_loss_weight * s.losses["load_balance"] + w.z_loss_weight * s.losses["z_loss"]
        for s in out.router_stats
    )
    torch.testing.assert_close(out.aux_loss.detach(), expected)


def test_tied_embeddings_share_one_tensor():
    model = _model(_cfg())
    assert model.lm_head.weight is model.embed.weight
    untied = _model(_cfg(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.embed.weight


def test_residual_projections_get_the_scaled_init():
    model = _model(_cfg(d_model=64, dense_hidden=256, n_layers=8, init_std=0.02))
    scaled = 0.02 / math.sqrt(16)
    assert model.blocks[0].attn.o_proj.weight.std().item() == pytest.approx(scaled, rel=0.1)
    assert model.blocks[0].ffn.experts.w2.std().item() == pytest.approx(scaled, rel=0.1)
    assert model.blocks[0].attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(model.norm.weight, torch.ones(64))


def test_update_router_biases_moves_sigmoid_biases_only():
    model = _model(_cfg(moe={"router": "sigmoid_bias", "bias_update_rate": 0.01})).train()
    model(_idx())
    model.update_router_biases()
    biases = [layer.router.expert_bias for layer in model.moe_layers()]
    assert all(b.abs().sum() > 0 for b in biases)
    softmax = _model(_cfg()).train()
    softmax(_idx())
    softmax.update_router_biases()  # a no-op, and must not fail


def test_flops_per_token_formula():
    cfg = _cfg(tie_embeddings=False)
    model = _model(cfg)
    active = model.num_params()["active"]
    expected = 6 * (active - VOCAB * 32) + 12 * 3 * 32 * 16
    assert model.flops_per_token(16) == expected


def test_generate_greedy_is_deterministic_and_sampling_follows_the_generator():
    model = _model(_cfg()).eval()
    prompt = _idx(b=2, length=20)  # + 8 new tokens > max_seq_len: the context is cropped
    greedy = model.generate(prompt, 8, temperature=0)
    assert greedy.shape == (2, 28) and torch.equal(greedy[:, :20], prompt)
    assert torch.equal(greedy, model.generate(prompt, 8, temperature=0))
    first = model.generate(prompt, 6, top_k=5, generator=torch.Generator().manual_seed(7))
    second = model.generate(prompt, 6, top_k=5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(first, second)
    assert ((first >= 0) & (first < VOCAB)).all()


def test_top_k_1_sampling_equals_greedy():
    model = _model(_cfg()).eval()
    prompt = _idx(b=1, length=5)
    torch.testing.assert_close(
        model.generate(prompt, 4, top_k=1), model.generate(prompt, 4, temperature=0)
    )


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="max_seq_len"):
        _model(_cfg())(_idx(length=25))
