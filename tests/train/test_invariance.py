"""The loss and its gradients do not depend on how a global batch is split into micro-batches.

Same 4 windows, one optimizer step: one micro-batch of 4 (grad_accum 1) against two of 2
(grad_accum 2). Gradients are read before clipping (``on_before_optimizer_step``).
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback


class FirstStepGradients(Callback):
    def __init__(self):
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_step == 0:
            self.grads = {
                n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None
            }


def first_step(tiny, paths, micro_batch_size: int, grad_accum: int, moe: dict):
    grads = FirstStepGradients()
    p = tiny.params(
        max_steps=1,
        micro_batch_size=micro_batch_size,
        grad_accum=grad_accum,
        model={"moe": moe},
        runtime={"resume": "never"},
    )
    result = tiny.run(paths, p, callbacks=[grads])
    return {**result.history["train"][0], **result.history["routing_digest"][0]}, grads.grads


def relative_differences(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]
) -> dict[str, float]:
    assert a.keys() == b.keys() and a
    return {k: ((a[k] - b[k]).norm() / a[k].norm().clamp_min(1e-12)).item() for k in a}


# Token-mean and per-sequence router losses are exactly invariant; only fp32 summation order
# differs (two backward passes summed vs one), hence 1e-5 and not 0.
EXACT = {"balance": "sequence", "aux_loss_weight": 1e-2, "z_loss_weight": 1e-3}


def test_exactly_invariant_losses_give_the_same_loss_and_gradients(tiny, corpus):
    whole, g_whole = first_step(tiny, corpus, 4, 1, EXACT)
    split, g_split = first_step(tiny, corpus, 2, 2, EXACT)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert split["aux_loss"] == pytest.approx(whole["aux_loss"], rel=1e-5)
    assert max(relative_differences(g_whole, g_split).values()) < 1e-5
    # Same weights, same tokens: the same routing decisions, found at the same positions of the
    # step's global batch whichever micro-batch routed them.
    assert split["digest"] == whole["digest"]


def test_switch_balance_loss_keeps_its_scale_under_accumulation(tiny, corpus):
    """The Switch loss is computed per micro-batch (a product of two batch means). Its value stays
    put (both splits give ~1 per layer at init; a loss rescaled by the accumulation factor would
    be 2x), but its gradient uses each micro-batch's own expert fractions, so with 64-token
    micro-batches the router weights' gradients differ by up to ~80% (measured), and so does
    everything upstream of a router. Parameters no router loss reaches must stay exact."""
    moe = {"aux_loss_weight": 0.05, "z_loss_weight": 0.0}
    whole, g_whole = first_step(tiny, corpus, 4, 1, moe)
    split, g_split = first_step(tiny, corpus, 2, 2, moe)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)  # cross-entropy: exact
    assert split["aux_loss"] == pytest.approx(whole["aux_loss"], rel=1e-2)
    differences = relative_differences(g_whole, g_split)
    beyond_routers = (
        "model.norm.weight",
        *(f"blocks.1.ffn.experts.{w}" for w in ("w13", "w2")),
    )
    exact = {k: v for k, v in differences.items() if k.endswith(beyond_routers)}
    assert len(exact) == 3 and max(exact.values()) < 1e-5
    assert max(differences.values()) > 1e-3  # the per-micro-batch estimator does show


def test_global_balance_under_accumulation_gives_the_full_batch_loss_and_gradients(tiny, corpus):
    """``balance: global`` with 2 × 2 windows instead of 1 × 4: the routing pre-pass gives both
    micro-batches the whole step's expert counts (pipeline/train/step_routing.py), so the loss and
    every gradient are the full batch's, up to fp32 summation order as for the exactly invariant
    losses (1e-5); the per-micro-batch loss beside it shows what the split would cost otherwise."""
    balance = {"aux_loss_weight": 0.05, "z_loss_weight": 0.0}
    whole, g_whole = first_step(tiny, corpus, 4, 1, {**balance, "balance": "global"})
    split, g_split = first_step(tiny, corpus, 2, 2, {**balance, "balance": "global"})
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    assert split["aux_loss"] == pytest.approx(whole["aux_loss"], rel=1e-5)
    assert max(relative_differences(g_whole, g_split).values()) < 1e-5
    _, g_split_micro = first_step(tiny, corpus, 2, 2, balance)
    routers = [k for k in g_whole if k.endswith("router.weight")]
    assert len(routers) == 2
    assert min(relative_differences(g_whole, g_split_micro)[k] for k in routers) > 1e-2
