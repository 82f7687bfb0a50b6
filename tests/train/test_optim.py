"""Optimizer groups and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.config import OptimConfig
from pipeline.train.optim import build_optimizer, param_groups, warmup_cosine


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 4)  # weight decays; bias does not
        self.norm = nn.LayerNorm(4)
        self.experts_w1 = nn.Parameter(torch.zeros(3, 4, 8))  # 3-D expert weights decay


def test_decay_only_on_weight_matrices():
    model = Toy()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert sorted(names[id(p)] for p in decay["params"]) == ["experts_w1", "proj.weight"]
    assert sorted(names[id(p)] for p in no_decay["params"]) == [
        "embed_tokens.weight",
        "norm.bias",
        "norm.weight",
        "proj.bias",
    ]


def test_warmup_then_cosine_to_the_floor():
    factor = warmup_cosine(warmup_steps=4, max_steps=14, min_ratio=0.1)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert factor(4) == pytest.approx(1.0)
    assert factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert factor(14) == pytest.approx(0.1) and factor(100) == pytest.approx(0.1)
    values = [factor(s) for s in range(4, 15)]
    assert values == sorted(values, reverse=True)


def test_warmup_stable_decay_holds_the_peak_then_decays_over_the_last_fraction():
    factor = warmup_cosine(warmup_steps=4, max_steps=24, min_ratio=0.1, decay_fraction=0.25)
    assert [factor(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert [factor(s) for s in range(4, 20)] == [1.0] * 16  # decay: last 5 of 20
    assert factor(21) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 2 / 5)))
    assert factor(24) == pytest.approx(0.1)
    values = [factor(s) for s in range(19, 25)]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]


def test_scheduler_steps_the_optimizer_lr():
    optimizer, scheduler = build_optimizer(
        Toy(), OptimConfig(lr=1e-2, warmup_steps=2), max_steps=10
    )
    lrs = []
    for _ in range(3):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([5e-3, 1e-2, 1e-2])
    assert scheduler.state_dict()["lr_lambdas"] == [None, None]  # no schedule state is saved


def test_adamw_is_fused_unless_the_run_is_mixed_precision():
    fused, _ = build_optimizer(Toy(), OptimConfig(), max_steps=10)
    mixed, _ = build_optimizer(Toy(), OptimConfig(), max_steps=10, mixed_precision=True)
    assert fused.defaults["fused"] is True
    # Lightning's mixed-precision plugin refuses gradient clipping with a fused optimizer; torch
    # keeps its own choice there (None: an explicit False would also turn off foreach on GPUs).
    assert not mixed.defaults["fused"]
    assert mixed.defaults["fused"] is None and mixed.defaults["foreach"] is None


def test_a_fused_step_matches_the_for_loop_step():
    """The kernel changes the order of float operations, not what AdamW computes."""
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = [p.detach().clone() for p in models[0].parameters()]
    cfg = OptimConfig(lr=1e-2, warmup_steps=1)
    optimizers = [
        build_optimizer(models[0], cfg, max_steps=10)[0],
        build_optimizer(models[1], cfg, max_steps=10, mixed_precision=True)[0],  # for-loop
    ]
    x = torch.randn(16, 4)
    for _ in range(3):
        for model, optimizer in zip(models, optimizers, strict=True):
            model(x).square().mean().backward()
            optimizer.step()
            optimizer.zero_grad()
    for fused, loop, before in zip(
        models[0].parameters(), models[1].parameters(), start, strict=True
    ):
        assert not torch.equal(fused, before)  # the steps moved every parameter
        torch.testing.assert_close(fused, loop, rtol=1e-6, atol=1e-7)
