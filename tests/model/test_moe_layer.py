"""The MoE layer: the degenerate case, capacity in the layer, shared experts, autocast, stats."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import MoEConfig
from pipeline.model import MLP, MoELayer


def _layer(d=16, seed=0, backend="auto", **moe) -> MoELayer:
    layer = MoELayer(d, MoEConfig(**moe), backend=backend)
    g = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=g)
    return layer


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("renormalize", [True, False])
def test_one_expert_top1_equals_the_dense_mlp(backend, renormalize):
    layer = _layer(
        num_experts=1, top_k=1, expert_hidden=12, renormalize=renormalize, backend=backend
    )
    mlp = MLP(16, 12)
    with torch.no_grad():
        mlp.w1.weight.copy_(layer.experts.w13[0, :12])  # the gate projection, then the up
        mlp.w3.weight.copy_(layer.experts.w13[0, 12:])
        mlp.w2.weight.copy_(layer.experts.w2[0])
    x = torch.randn(2, 5, 16, requires_grad=True)
    y_moe, _, stats = layer(x)
    y_mlp = mlp(x)
    # Same products in the same dtype; only the summation order of the kernels may differ.
    torch.testing.assert_close(y_moe, y_mlp, rtol=1e-5, atol=1e-6)
    (gx_moe,) = torch.autograd.grad(y_moe.square().sum(), x)
    (gx_mlp,) = torch.autograd.grad(y_mlp.square().sum(), x)
    torch.testing.assert_close(gx_moe, gx_mlp, rtol=1e-5, atol=1e-6)
    assert stats.load.tolist() == [1.0]


def test_capacity_drops_in_training_and_reports_the_fraction():
    """E=2, k=1, T=6 tokens, factor 0.5 → 2 slots per expert. The router weight is the identity,
    so the logits are the inputs' first two coordinates and the routing is known by hand."""
    layer = _layer(d=2, num_experts=2, top_k=1, expert_hidden=4, capacity_factor=0.5)
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
    # tokens 0, 1, 2, 4 prefer expert 0 (margins 3, 1, 2, 4); tokens 3, 5 prefer expert 1
    x = torch.tensor([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [4.0, 0.0], [0.0, 2.0]])
    x = x.view(1, 6, 2)
    layer.train()
    y, _, stats = layer(x)
    assert stats.dropped_fraction.item() == pytest.approx(2 / 6)
    dropped = torch.tensor([False, True, True, False, False, False])  # expert 0 keeps 4 and 0
    assert torch.equal(y[0, dropped], torch.zeros(2, 2)), "a dropped token gets no expert output"
    assert (y[0, ~dropped].abs().sum(-1) > 0).all()
    assert stats.load.tolist() == pytest.approx([4 / 6, 2 / 6])  # the router's choice, before drops
    layer.eval()
    y_eval, _, stats_eval = layer(x)
    assert stats_eval.dropped_fraction.item() == 0.0, "eval is dropless"
    assert (y_eval[0].abs().sum(-1) > 0).all()


def test_position_policy_in_the_layer():
    layer = _layer(d=2, num_experts=2, top_k=1, expert_hidden=4, capacity_factor=0.5,
                   drop_policy="position")  # fmt: skip
    with torch.no_grad():
        layer.router.weight.copy_(torch.eye(2))
    x = torch.tensor([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [4.0, 0.0], [0.0, 2.0]])
    y, _, stats = layer(x.view(1, 6, 2))
    assert stats.dropped_fraction.item() == pytest.approx(2 / 6)
    assert (y[0, [2, 4]] == 0).all(), "position keeps tokens 0 and 1 of expert 0"


def test_shared_experts_are_added_to_every_token():
    layer = _layer(num_experts=4, top_k=2, expert_hidden=8, num_shared_experts=2)
    assert layer.shared.w1.weight.shape == (16, 16)  # 2 shared experts of 8 = one SwiGLU of 16
    x = torch.randn(2, 3, 16)
    y, _, _ = layer(x)
    with torch.no_grad():
        layer.experts.w2.zero_()  # silence the routed experts
    y_shared_only, _, _ = layer(x)
    torch.testing.assert_close(y_shared_only, layer.shared(x))
    assert not torch.allclose(y, y_shared_only)


@pytest.mark.parametrize(
    "balance,name",
    [("micro", "load_balance"), ("sequence", "seq_balance"), ("global", "global_balance")],
)
def test_aux_loss_is_the_weighted_sum_of_the_named_losses(balance, name):
    layer = _layer(num_experts=4, top_k=2, aux_loss_weight=0.5, z_loss_weight=0.25,
                   balance=balance)  # fmt: skip
    _, aux, stats = layer(torch.randn(3, 4, 16))
    named = stats.losses
    assert set(named) == {name, "z_loss"}
    torch.testing.assert_close(aux.detach(), 0.5 * named[name] + 0.25 * named["z_loss"])
    assert aux.requires_grad and aux.dim() == 0
    assert all(not v.requires_grad for v in named.values())


def test_bf16_autocast_runs_experts_in_bf16_and_routes_in_fp32():
    layer = _layer(num_experts=4, top_k=2, expert_hidden=8)
    x = torch.randn(2, 3, 16)
    y32, _, _ = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, aux, _ = layer(x)
    assert y16.dtype == torch.bfloat16 and aux.dtype == torch.float32
    err = (y16.float() - y32).norm() / y32.norm()
    assert err < 2e-2, f"bf16 vs fp32 norm-relative error {err:.3g}"  # bf16 eps ≈ 4e-3


# --------------------------------------------------------------------------- balance scopes
def _router_grad(layer: MoELayer, aux: torch.Tensor) -> torch.Tensor:
    (grad,) = torch.autograd.grad(aux, layer.router.weight)
    return grad


def test_global_balance_of_a_step_of_one_micro_batch_is_the_micro_balance():
    """With one micro-batch per step the step's counts are the micro-batch's: same value and
    router gradient, bit for bit."""
    x = torch.randn(3, 4, 16)
    results = []
    for balance in ("micro", "global"):
        layer = _layer(num_experts=4, top_k=2, balance=balance, z_loss_weight=0.0).train()
        layer.begin_micro_batch()
        _, aux, _ = layer(x)
        results.append((aux.detach(), _router_grad(layer, aux)))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_global_balance_counts_the_step_so_far_and_the_step_moves_the_bias():
    """Micro-batch 2's loss takes the counts of micro-batches 1 and 2 (Megatron-Core's
    estimate), micro-batch 1's its own; eval forwards count nothing; end_step hands the
    step's counts to the bias update and starts the next step from zero."""
    from pipeline.model.losses import load_balance_loss

    layer = _layer(num_experts=4, top_k=2, balance="global", router="sigmoid_bias",
                   bias_update_rate=0.1, z_loss_weight=0.0).train()  # fmt: skip
    xs = [torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    counts = []
    for x in xs:
        layer.begin_micro_batch()
        _, aux, stats = layer(x)
        counts.append(stats.counts)
        step_so_far = torch.stack(counts).sum(0)
        prob_sum_E = stats.mean_prob * 8  # 8 tokens
        expected = load_balance_loss(step_so_far, prob_sum_E, 8)
        torch.testing.assert_close(stats.losses["global_balance"], expected)
        torch.testing.assert_close(aux.detach(), layer.cfg.aux_loss_weight * expected)
    assert not torch.equal(counts[0], counts[1])  # otherwise the step-so-far would not show
    layer.eval()
    layer(xs[0])  # a validation forward: no step's counts
    assert torch.equal(layer.micro_counts_E, counts[1])
    layer.train()
    total = counts[0] + counts[1]
    layer.end_step()
    torch.testing.assert_close(layer.router.expert_bias, 0.1 * torch.sign(total.mean() - total))
    assert not layer.step_counts_E.any() and not layer.micro_counts_E.any()
