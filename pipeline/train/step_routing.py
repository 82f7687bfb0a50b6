"""Exact global-batch balance under gradient accumulation: a routing pre-pass per step.

With ``train.model.moe.balance: global`` the balance loss takes the expert frequencies of the
whole optimizer step (:mod:`pipeline.model.losses`). Over ranks they are known at once (the MoE
layer sums each micro-batch's counts over the ranks), but with ``grad_accum = k > 1`` the first
micro-batch runs its backward before the later ones are routed. So before the step's first
micro-batch the trainer routes all k of them once, without gradients, and gives every MoE layer
the step's counts (``MoELayer.known_step_counts_E``); each micro-batch then balances with the
exact full-step frequencies, and the accumulated gradient is the full batch's. Megatron-Core
instead uses the counts of the micro-batches seen so far (``_apply_global_aux_loss`` in
``megatron/core/transformer/moe/router.py``), which the layer still falls back to when no count
is given; measured against the full batch, that estimate's router gradient is off by the same
order as the per-micro-batch loss it replaces, the pre-pass's by fp32 rounding only
(bench/RESULTS.md, "Global-batch balance under accumulation").

Cost: one forward pass per micro-batch (no backward, no activations kept), by arithmetic about a
third of a training step's compute (not measured), paid only by ``global`` runs with
``grad_accum > 1``. Exact when the second forward routes every token as the first did: the same
weights and inputs through the same kernels, in the training step's precision context (what
activation checkpointing relies on too); where a kernel is non-deterministic on a GPU, a token
at a near-tie may switch experts, moving one frequency by ``1 / (T · k)``.

The step's micro-batches come from the data module's sampler: micro-batch ``m`` of optimizer step
``s`` is global micro-batch ``s · k + m`` of the stream
(:class:`~pipeline.train.data.WindowStream`), whatever the resume history; the first is checked
against the batch Lightning hands over.
"""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError
from pipeline.model import MoETransformer


class StepRoutingError(PipelineError):
    """The routing pre-pass did not find the step's micro-batches where the sampler puts them."""


def step_inputs(datamodule, step: int, accumulation: int, device) -> list[torch.Tensor]:
    """This rank's ``(B, L)`` inputs of the ``accumulation`` micro-batches of optimizer ``step``."""
    sampler, windows = datamodule.sampler, datamodule.train_set
    return [
        torch.stack([windows[i][0] for i in sampler.micro_batch(step * accumulation + m)]).to(
            device
        )
        for m in range(accumulation)
    ]


@torch.no_grad()
def step_expert_counts(model: MoETransformer, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each MoE layer's assignments per expert over ``inputs`` (summed over the ranks, as every
    layer counts them), from training-mode forwards without gradients; the layers' step
    counts are left as they were."""
    layers = model.moe_layers()
    saved = [(layer.step_counts_E.clone(), layer.micro_counts_E.clone()) for layer in layers]
    totals = [torch.zeros_like(layer.step_counts_E) for layer in layers]
    for idx_BL in inputs:
        for total, stats in zip(totals, model(idx_BL).router_stats, strict=True):
            total += stats.counts
    for layer, (step_E, micro_E) in zip(layers, saved, strict=True):
        layer.step_counts_E.copy_(step_E)
        layer.micro_counts_E.copy_(micro_E)
    return totals


def count_step_routing(pl_module, batch_inputs: torch.Tensor) -> None:
    """Before optimizer step ``trainer.global_step``'s first micro-batch (``batch_inputs``):
    route the step's micro-batches and give each MoE layer the step's counts."""
    trainer = pl_module.trainer
    k, step = trainer.accumulate_grad_batches, trainer.global_step
    inputs = step_inputs(trainer.datamodule, step, k, pl_module.device)
    if not torch.equal(inputs[0], batch_inputs):
        raise StepRoutingError(
            f"train: the routing pre-pass of step {step + 1} expected the sampler's global "
            f"micro-batch {step * k} first, and Lightning handed over another batch; train "
            "without balance: global, or with grad_accum: 1, and report this"
        )
    with trainer.strategy.precision_plugin.train_step_context():
        counts = step_expert_counts(pl_module.model, inputs)
    for layer, counts_E in zip(pl_module.model.moe_layers(), counts, strict=True):
        layer.known_step_counts_E = counts_E
