"""AdamW with decoupled decay on matrices only, and a warmup-stable-decay (cosine) LR schedule."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from pipeline.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay only weight matrices: decaying norms' gains, biases or embedding rows pulls them
    towards zero for no regularisation benefit (the GPT-2/nanoGPT convention)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim < 2 or "embed" in name.lower():
            no_decay.append(param)
        else:
            decay.append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(
    warmup_steps: int, max_steps: int, min_ratio: float, decay_fraction: float = 1.0
) -> Callable[[int], float]:
    """LR multiplier at optimizer step ``step``: linear warmup to 1, then cosine decay to
    ``min_ratio`` over the last ``decay_fraction`` of the remaining steps, held at 1 before that.

    ``decay_fraction = 1`` is the plain warmup + cosine schedule; below 1 it is
    warmup-stable-decay (Hägele et al. 2024, arXiv:2405.18392): the LR stays at its peak for
    most of the run, which matters for the tiny CPU default, whose copy-from-context skill only
    appears after a few hundred steps at a high LR (bench/RESULTS.md).

    A plain function on purpose: ``LambdaLR`` saves nothing of it, so a resumed run takes its
    schedule from the current params rather than silently from the checkpoint.
    """
    span = max(max_steps - warmup_steps, 1)
    decay_span = max(round(decay_fraction * span), 1)
    decay_start = max_steps - decay_span

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(max(step - decay_start, 0) / decay_span, 1.0)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def fusable(groups: list[dict], mixed_precision: bool) -> bool:
    """Whether AdamW takes torch's fused kernel: one kernel per parameter tensor, which reads and
    writes each of its four tensors once. Without it torch takes its for-loop AdamW on CPU
    tensors (it picks foreach for GPU ones only): eight passes per tensor, two into new
    temporaries; on the mid-size MoE model (109 M parameters) 350 ms of a 5.1 s CPU step
    (bench/RESULTS.md). transformers' Trainer defaults to the fused kernel too. Two cases keep
    torch's choice: a mixed-precision run, because Lightning's mixed-precision plugin refuses
    gradient clipping with an optimizer that could unscale fp16 gradients itself (the fused one
    can); and a run with DTensor parameters, because the kernel takes a group's tensors in one
    call and refuses plain tensors mixed with DTensors (FSDP2 with expert parallelism shards
    all but the experts). Keeping torch's choice means passing ``fused=None``: an explicit
    ``False`` also turns off the foreach kernel torch would pick for GPU tensors."""
    dtensors = any(isinstance(p, DTensor) for g in groups for p in g["params"])
    return not (mixed_precision or dtensors)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, max_steps: int, mixed_precision: bool = False
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW and its schedule; ``mixed_precision``: the run's precision is ``*-mixed``."""
    groups = param_groups(model, cfg.weight_decay)
    fused = True if fusable(groups, mixed_precision) else None  # None: torch's own choice
    optimizer = torch.optim.AdamW(
        groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=fused
    )
    schedule = warmup_cosine(cfg.warmup_steps, max_steps, cfg.min_lr_ratio, cfg.decay_fraction)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
