"""Routers: softmax top-k, sigmoid with a balancing bias, expert choice; and their sums."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from pipeline.config import MoEConfig
from pipeline.model import build_router
from pipeline.model.router import _warn_once, expert_counts


def _router(d=8, **moe):
    router = build_router(d, MoEConfig(**moe))
    torch.nn.init.normal_(router.weight, generator=torch.Generator().manual_seed(0))
    return router


def _x(t=32, d=8, seed=1):
    return torch.randn(t, d, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- softmax_topk
def test_softmax_topk_renormalised_weights_sum_to_one():
    r = _router(num_experts=6, top_k=3, renormalize=True)(_x())
    torch.testing.assert_close(r.weights_TK.sum(-1), torch.ones(32))
    assert r.expert_ids_TK.shape == (32, 3)
    assert (r.expert_ids_TK.sort(-1).values.diff(dim=-1) > 0).all(), "k distinct experts"


def test_softmax_top1_without_renormalisation_is_switch():
    r = _router(num_experts=4, top_k=1, renormalize=False)(_x())
    max_prob, argmax = r.probs_TE.max(-1)
    torch.testing.assert_close(r.weights_TK[:, 0], max_prob)
    assert torch.equal(r.expert_ids_TK[:, 0], argmax)
    assert (r.weights_TK < 1).all(), "Switch weights are the raw probabilities"


def test_router_logits_are_float32_under_bf16_autocast():
    router = _router(num_experts=4, top_k=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        r = router(_x().bfloat16())
    assert r.logits_TE.dtype == r.weights_TK.dtype == torch.float32


# --------------------------------------------------------------------------- sigmoid_bias
def test_sigmoid_bias_changes_selection_not_the_weight_formula():
    router = _router(num_experts=4, top_k=2, router="sigmoid_bias")
    x = _x()
    before = router(x)
    assert not (before.expert_ids_TK == 3).all(dim=0).any()
    router.expert_bias[3] = 10.0  # every token now selects expert 3
    after = router(x)
    assert (after.expert_ids_TK == 3).any(dim=1).all()
    scores = (x @ router.weight.t()).sigmoid()  # the unbiased scores
    picked = scores.gather(1, after.expert_ids_TK)
    torch.testing.assert_close(after.weights_TK, picked / picked.sum(-1, keepdim=True))
    torch.testing.assert_close(after.probs_TE, before.probs_TE)  # the bias never enters probs


def test_sigmoid_bias_update_moves_toward_balance():
    router = _router(num_experts=4, top_k=1, router="sigmoid_bias", bias_update_rate=0.05)
    with torch.no_grad():
        router.weight[0, 0] += 4.0  # with x[:, 0] > 0, most tokens prefer expert 0
    x = _x(t=64)
    x[:, 0] = x[:, 0].abs() + 0.5

    def loads():
        return torch.bincount(router(x).expert_ids_TK.flatten(), minlength=4)

    before = loads()
    assert before.argmax() == 0 and before.max() > 40, before
    router.update_bias(router(x).counts_E + router(x).counts_E)  # a step of two micro-batches
    expected = 0.05 * torch.sign(2 * before.float().mean() - 2 * before.float())
    torch.testing.assert_close(router.expert_bias, expected)
    for _ in range(50):
        router.update_bias(router(x).counts_E)
    after = loads()
    assert after.max() < before.max() / 2, f"loads before {before.tolist()}, after {after.tolist()}"


def test_sigmoid_bias_update_from_a_step_without_counts_is_noop():
    router = _router(num_experts=4, top_k=2, router="sigmoid_bias")
    router.update_bias(torch.zeros(4))
    assert torch.equal(router.expert_bias, torch.zeros(4))


# --------------------------------------------------------------------------- group-limited
# (The fused kernel, the PyTorch router and a per-token loop agree:
# tests/ops/test_triton_routing.py.)
@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_bias"])
def test_group_limited_routing_keeps_each_token_inside_its_best_groups(router):
    """8 experts in 4 groups of 2, 2 groups kept: each token's 3 experts lie in at most 2
    groups, and the limit does change some tokens' experts (the check is not vacuous)."""
    grouped = _router(num_experts=8, top_k=3, n_groups=4, topk_groups=2, router=router)
    free = _router(num_experts=8, top_k=3, router=router)
    x = _x(t=200)
    ids_TK = grouped(x).expert_ids_TK
    assert all(len({i // 2 for i in row}) <= 2 for row in ids_TK.tolist())
    assert not torch.equal(ids_TK.sort(-1).values, free(x).expert_ids_TK.sort(-1).values)
    r = grouped(x)  # the weights are the scores of the picks, renormalised
    picked_TK = r.probs_TE.gather(1, r.expert_ids_TK)
    if router == "sigmoid_bias":
        picked_TK = r.logits_TE.sigmoid().gather(1, r.expert_ids_TK)
    torch.testing.assert_close(r.weights_TK, picked_TK / picked_TK.sum(-1, keepdim=True))


def test_all_groups_kept_is_plain_top_k():
    same = _router(num_experts=8, top_k=3, n_groups=4, topk_groups=4)
    assert (same.n_groups, same.topk_groups) == (1, 1)
    assert MoEConfig(num_experts=8, n_groups=4, topk_groups=4).group_limited is False


@pytest.mark.parametrize(
    "moe,message",
    [
        ({"num_experts": 8, "n_groups": 3}, "n_groups = 3 must divide num_experts = 8"),
        ({"num_experts": 8, "n_groups": 8}, "at least 2"),
        ({"num_experts": 8, "n_groups": 4, "topk_groups": 5}, "topk_groups = 5 exceeds"),
        ({"num_experts": 8, "top_k": 3, "n_groups": 4}, "top_k = 3 exceeds the 2 experts"),
        ({"num_experts": 8, "n_groups": 4, "topk_groups": 2, "router": "expert_choice"},
         "expert_choice has no per-token groups"),
    ],
)  # fmt: skip
def test_group_settings_that_cannot_route_are_refused_by_name(moe, message):
    with pytest.raises(ValueError, match=message):
        MoEConfig(**moe)


# --------------------------------------------------------------------------- expert_choice
def test_expert_choice_gives_each_expert_exactly_capacity_tokens():
    router = _router(num_experts=4, top_k=2, router="expert_choice", capacity_factor=1.5)
    router.train()
    r = router(_x(t=30))
    c = math.ceil(1.5 * 30 * 2 / 4)
    counts = torch.stack([(r.expert_ids_TK == e).sum() for e in range(4)])
    assert counts.tolist() == [c] * 4
    chosen = r.expert_ids_TK >= 0
    torch.testing.assert_close(r.weights_TK[chosen], r.probs_TE[chosen])
    assert torch.equal(r.weights_TK[~chosen], torch.zeros_like(r.weights_TK[~chosen]))
    # each expert holds its top-c tokens by probability
    for e in range(4):
        top = set(r.probs_TE[:, e].topk(c).indices.tolist())
        assert set(torch.nonzero(r.expert_ids_TK[:, e] == e).flatten().tolist()) == top


def test_expert_choice_falls_back_to_token_choice_in_eval(caplog):
    router = _router(num_experts=4, top_k=2, router="expert_choice", renormalize=True)
    router.eval()
    _warn_once.cache_clear()  # logged once per process: an earlier test may have logged it
    with caplog.at_level(logging.WARNING):
        r = router(_x())
    assert r.expert_ids_TK.shape == (32, 2) and (r.expert_ids_TK >= 0).all()
    torch.testing.assert_close(r.weights_TK.sum(-1), torch.ones(32))
    assert "not causal" in caplog.text


def test_routing_carries_the_sums_its_losses_need():
    """counts, Σ probs and Σ logsumexp² come with the decisions, so no loss recounts them."""
    for kind in ("softmax_topk", "sigmoid_bias", "expert_choice"):
        router = _router(num_experts=4, top_k=2, router=kind).train()
        r = router(_x())
        assert torch.equal(r.counts_E, expert_counts(r.expert_ids_TK, 4)), kind
        assert torch.equal(r.prob_sum_E, r.probs_TE.sum(0)), kind
        torch.testing.assert_close(r.z_sum, r.logits_TE.logsumexp(-1).square().sum())
        assert r.prob_sum_E.requires_grad and r.z_sum.requires_grad
