"""Router losses and capacity dropping.

Granularity and scale. Every loss is computed per MoE layer, per micro-batch, on the local tokens
only, and is a MEAN (over tokens or over sequences), never a sum. Its value and gradient scale
therefore do not depend on how many micro-batches are accumulated or how many data-parallel
processes there are: the trainer averages the per-micro-batch losses (gradient accumulation
divides by the number of steps, DDP averages gradients), exactly as it does for the
cross-entropy. What holds exactly when a batch is split into equal micro-batches:

- ``z_loss`` (mean over tokens) and ``seq_balance`` (mean over sequences): the average of the
  micro-batch values equals the full-batch value.
- ``load_balance`` (Switch, ``E · Σ_e f_e · P_e``) is a product of two token means, so the average
  of per-micro-batch values is a different estimator from the full-batch value (as in Megatron's
  and Switch's per-micro-batch implementations). Both are 1 for perfectly balanced routing at
  any split; they coincide exactly when the micro-batches have identical routing statistics.
  Balancing per micro-batch is also the stricter objective.

Legend: T tokens, B sequences, L tokens per sequence (T = B·L), K slots, E experts.
"""

from __future__ import annotations

import torch


def expert_counts(ids_TK: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(E,) float number of assignments per expert; empty slots (-1) are not counted."""
    return torch.bincount(ids_TK.reshape(-1) + 1, minlength=num_experts + 1)[1:].float()


def load_balance_loss(
    ids_TK: torch.Tensor, probs_TE: torch.Tensor, counts_E: torch.Tensor | None = None
) -> torch.Tensor:
    """Switch Transformer loss ``E · Σ_e f_e · P_e``; 1 when routing is uniform.

    ``f_e`` is the fraction of assignments routed to e (not differentiable), ``P_e`` the mean
    router probability of e. With k > 1, ``f`` is normalised over the T·k assignments so that
    the minimum stays 1 whatever k. ``counts_E`` overrides the local counts (a distributed run
    passes the counts summed over its ranks, so ``f`` is the global batch's).
    """
    num_experts = probs_TE.shape[1]
    if counts_E is None:
        counts_E = expert_counts(ids_TK, num_experts)
    f_E = counts_E / counts_E.sum().clamp(min=1)
    return num_experts * (f_E * probs_TE.mean(dim=0)).sum()


def z_loss(logits_TE: torch.Tensor) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of ``logsumexp(logits)²``."""
    return logits_TE.logsumexp(dim=-1).square().mean()


def seq_balance_loss(ids_TK: torch.Tensor, probs_TE: torch.Tensor, batch: int) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss: the Switch loss within each sequence, averaged.

    Balancing each sequence (not only the batch) keeps single long documents from saturating a
    few experts; the mean over sequences makes the value independent of the batch size.
    """
    num_experts = probs_TE.shape[1]
    ids_BN = ids_TK.reshape(batch, -1)
    valid_BN = (ids_BN >= 0).float()
    counts_BE = torch.zeros(batch, num_experts, device=ids_TK.device)
    counts_BE.scatter_add_(1, ids_BN.clamp(min=0), valid_BN)
    f_BE = counts_BE / counts_BE.sum(dim=1, keepdim=True).clamp(min=1)
    p_BE = probs_TE.reshape(batch, -1, num_experts).mean(dim=1)
    return (num_experts * (f_BE * p_BE).sum(dim=1)).mean()


def router_entropy(probs_TE: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the entropy (nats) of the router distribution; ln E when uniform."""
    return torch.special.entr(probs_TE).sum(dim=-1).mean()


@torch.no_grad()
def capacity_keep_mask(
    scores_TK: torch.Tensor, ids_TK: torch.Tensor, capacity: int, policy: str
) -> torch.Tensor:
    """(T, K) bool: which assignments fit in their expert's ``capacity`` slots.

    ``probability`` keeps each expert's highest-scoring assignments (the layer passes the
    router probability of each assignment: renormalised top-1 weights are all 1 and could not
    rank anything); ``position`` keeps the earliest tokens (token order of the flattened
    micro-batch, slot order within a token). Ties keep token order (stable sorts).
    """
    flat_ids = ids_TK.reshape(-1)
    if policy == "probability":
        priority = torch.argsort(-scores_TK.reshape(-1), stable=True)
    elif policy == "position":
        priority = torch.arange(flat_ids.numel(), device=ids_TK.device)
    else:
        raise ValueError(f"unknown drop_policy {policy!r}; expected 'probability' or 'position'")
    by_expert = priority[torch.argsort(flat_ids[priority], stable=True)]
    counts_E = torch.bincount(flat_ids)
    starts_E = counts_E.cumsum(0) - counts_E
    rank_in_expert = (
        torch.arange(flat_ids.numel(), device=ids_TK.device) - starts_E[flat_ids[by_expert]]
    )
    keep = torch.empty_like(flat_ids, dtype=torch.bool)
    keep[by_expert] = rank_in_expert < capacity
    return keep.view_as(ids_TK)
