"""Routers, router losses, capacity dropping, and the losses' micro-batch granularity."""

from __future__ import annotations

import logging
import math

import pytest
import torch

from pipeline.config import MoEConfig
from pipeline.model import build_router, expert_capacity
from pipeline.model.losses import (
    capacity_keep_mask,
    load_balance_loss,
    router_entropy,
    seq_balance_loss,
    z_loss,
)
from pipeline.model.router import _warn_once


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from threads; avoids OpenMP stalls on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
        router.eval()  # eval forwards do not count toward the next update
        counts = torch.bincount(router(x).expert_ids_TK.flatten(), minlength=4)
        router.train()
        return counts

    before = loads()
    assert before.argmax() == 0 and before.max() > 40, before
    router.train()
    router(x)
    router(x)  # counts accumulate over micro-batches until the update
    router.update_bias()
    expected = 0.05 * torch.sign(2 * before.float().mean() - 2 * before.float())
    torch.testing.assert_close(router.expert_bias, expected)
    for _ in range(50):
        router(x)
        router.update_bias()
    after = loads()
    assert after.max() < before.max() / 2, f"loads before {before.tolist()}, after {after.tolist()}"


def test_sigmoid_bias_counts_only_in_training_and_update_without_counts_is_noop():
    router = _router(num_experts=4, top_k=2, router="sigmoid_bias")
    router.eval()
    router(_x())
    router.update_bias()
    assert torch.equal(router.expert_bias, torch.zeros(4))


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


# --------------------------------------------------------------------------- capacity
def test_capacity_hand_computed_case():
    # E=2, k=1, T=6, factor 0.5: capacity = ceil(0.5 * 6 * 1 / 2) = 2 slots per expert.
    ids = torch.tensor([[0], [0], [0], [1], [0], [1]])
    weights = torch.tensor([[0.9], [0.6], [0.8], [0.7], [0.95], [0.5]])
    cap = expert_capacity(6, 1, 2, 0.5)
    assert cap == 2
    by_prob = capacity_keep_mask(weights, ids, cap, "probability").flatten()
    assert by_prob.tolist() == [True, False, False, True, True, True]  # expert 0 keeps .95, .9
    by_pos = capacity_keep_mask(weights, ids, cap, "position").flatten()
    assert by_pos.tolist() == [True, True, False, True, False, True]  # expert 0 keeps tokens 0, 1
    assert 1 - by_prob.float().mean() == pytest.approx(2 / 6)


def test_capacity_position_policy_orders_slots_within_a_token():
    ids = torch.tensor([[0, 1], [1, 0]])
    keep = capacity_keep_mask(torch.ones(2, 2), ids, capacity=1, policy="position")
    assert keep.tolist() == [[True, True], [False, False]]


# --------------------------------------------------------------------------- losses
def test_load_balance_loss_hand_computed_and_uniform_minimum():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    ids = torch.tensor([[0, 1], [1, 2]])  # f = (1/4, 2/4, 1/4); P = (0.4, 0.4, 0.2)
    expected = 3 * (0.25 * 0.4 + 0.5 * 0.4 + 0.25 * 0.2)
    assert load_balance_loss(ids, probs).item() == pytest.approx(expected)
    uniform = torch.full((6, 3), 1 / 3)
    assert load_balance_loss(
        torch.arange(6).remainder(3).view(6, 1), uniform
    ).item() == pytest.approx(1)


def test_z_loss_and_entropy_formulas():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    expected = (math.log(4.0) ** 2 + (1 + math.log(2.0)) ** 2) / 2
    assert z_loss(logits).item() == pytest.approx(expected)
    assert router_entropy(torch.full((5, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert router_entropy(torch.eye(4)).item() == 0.0


def test_seq_balance_loss_is_per_sequence():
    # Sequence 0 balanced against its own probabilities, sequence 1 collapsed on expert 0.
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    ids = torch.tensor([[0], [1], [0], [0]])
    per_seq = [2 * (0.5 * 0.5 + 0.5 * 0.5), 2 * (1.0 * 1.0)]
    assert seq_balance_loss(ids, probs, batch=2).item() == pytest.approx(sum(per_seq) / 2)
    # The batch-level Switch loss of the same routing is lower: the collapse hides in the mix.
    assert load_balance_loss(ids, probs).item() < seq_balance_loss(ids, probs, batch=2).item()


# --------------------------------------------------------------------------- granularity
def _losses(router, x_BLD):
    b = x_BLD.shape[0]
    r = router(x_BLD.reshape(-1, x_BLD.shape[-1]))
    return {
        "load_balance": load_balance_loss(r.expert_ids_TK, r.probs_TE),
        "z_loss": z_loss(r.logits_TE),
        "seq_balance": seq_balance_loss(r.expert_ids_TK, r.probs_TE, b),
    }


def test_z_and_sequence_losses_average_exactly_over_micro_batches():
    router = _router(num_experts=5, top_k=2)
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(2))
    full = _losses(router, x)
    halves = [_losses(router, part) for part in x.chunk(2)]
    for name in ("z_loss", "seq_balance"):
        mean = (halves[0][name] + halves[1][name]) / 2
        torch.testing.assert_close(mean, full[name], msg=name)


def test_switch_loss_matches_the_batch_when_micro_batches_have_the_same_statistics():
    """Documented: the Switch loss is per micro-batch (a product of two means), so it equals
    the full-batch value when both halves route alike — here, identical halves."""
    router = _router(num_experts=5, top_k=2)
    half = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(3))
    full = _losses(router, torch.cat([half, half]))["load_balance"]
    torch.testing.assert_close(_losses(router, half)["load_balance"], full)


def test_loss_values_and_gradients_do_not_scale_with_the_number_of_tokens():
    """Means, not sums: replicating the batch (as more DDP ranks or accumulation steps would
    see more of the same data) changes neither the value nor the gradient."""
    router = _router(num_experts=4, top_k=2)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(4))

    def value_and_grad(inputs):
        router.zero_grad()
        total = sum(_losses(router, inputs).values())
        total.backward()
        return total.detach(), router.weight.grad.clone()

    v1, g1 = value_and_grad(x)
    v3, g3 = value_and_grad(torch.cat([x, x, x]))
    torch.testing.assert_close(v3, v1)
    torch.testing.assert_close(g3, g1)
