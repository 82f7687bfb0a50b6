"""Router losses (Switch balance, z-loss, sequence balance), entropy, and the losses'
micro-batch granularity."""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.config import MoEConfig
from pipeline.model import build_router
from pipeline.model.losses import load_balance_loss, seq_balance_loss, z_loss
from pipeline.model.router import expert_counts
from pipeline.model.routing_stats import router_entropy


def _router(d=8, **moe):
    router = build_router(d, MoEConfig(**moe))
    torch.nn.init.normal_(router.weight, generator=torch.Generator().manual_seed(0))
    return router


def switch(ids_TK, probs_TE):
    """The Switch loss of a routing given by ids and probabilities."""
    counts_E = expert_counts(ids_TK, probs_TE.shape[1])
    return load_balance_loss(counts_E, probs_TE.sum(0), probs_TE.shape[0])


def test_load_balance_loss_hand_computed_and_uniform_minimum():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    ids = torch.tensor([[0, 1], [1, 2]])  # f = (1/4, 2/4, 1/4); P = (0.4, 0.4, 0.2)
    expected = 3 * (0.25 * 0.4 + 0.5 * 0.4 + 0.25 * 0.2)
    assert switch(ids, probs).item() == pytest.approx(expected)
    uniform = torch.full((6, 3), 1 / 3)
    assert switch(torch.arange(6).remainder(3).view(6, 1), uniform).item() == pytest.approx(1)


def test_z_loss_and_entropy_formulas():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    expected = (math.log(4.0) ** 2 + (1 + math.log(2.0)) ** 2) / 2
    z_sum = logits.logsumexp(-1).square().sum()
    assert z_loss(z_sum, num_tokens=2).item() == pytest.approx(expected)
    assert router_entropy(torch.full((5, 8), 1 / 8)).item() == pytest.approx(math.log(8))
    assert router_entropy(torch.eye(4)).item() == 0.0


def test_seq_balance_loss_is_per_sequence():
    # Sequence 0 balanced against its own probabilities, sequence 1 collapsed on expert 0.
    probs = torch.tensor([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [1.0, 0.0]])
    ids = torch.tensor([[0], [1], [0], [0]])
    per_seq = [2 * (0.5 * 0.5 + 0.5 * 0.5), 2 * (1.0 * 1.0)]
    assert seq_balance_loss(ids, probs, batch=2).item() == pytest.approx(sum(per_seq) / 2)
    # The batch-level Switch loss of the same routing is lower: the collapse hides in the mix.
    assert switch(ids, probs).item() < seq_balance_loss(ids, probs, batch=2).item()


# --------------------------------------------------------------------------- granularity
def _losses(router, x_BLD):
    b = x_BLD.shape[0]
    r = router(x_BLD.reshape(-1, x_BLD.shape[-1]))
    t = r.logits_TE.shape[0]
    return {
        "load_balance": load_balance_loss(r.counts_E, r.prob_sum_E, t),
        "z_loss": z_loss(r.z_sum, t),
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
