"""Expert capacity: how many assignments an expert takes, and which ones it keeps.

Capacity (``capacity_factor`` not null) applies to token-choice routers in training only: the
MoE layer is dropless in eval mode, so evaluation and generation stay causal and independent of
what else is in the batch. A dropped assignment becomes an empty slot (id -1) before dispatch
and contributes nothing; the token still passes through the residual connection.

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots per token, E experts.
"""

from __future__ import annotations

import math

import torch


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """Slots per expert: ``ceil(factor · tokens · k / experts)``."""
    return math.ceil(factor * num_tokens * top_k / num_experts)


@torch.no_grad()
def capacity_keep_mask(
    scores_TK: torch.Tensor,
    ids_TK: torch.Tensor,
    counts_E: torch.Tensor,
    capacity: int,
    policy: str,
) -> torch.Tensor:
    """(T, K) bool: which assignments fit in their expert's ``capacity`` slots.

    ``counts_E`` are the assignments per expert, the router's own (``Routing.counts_E``): the
    layer counts its assignments once per forward.

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
    counts_E = counts_E.long()
    starts_E = counts_E.cumsum(0) - counts_E
    rank_in_expert = (
        torch.arange(flat_ids.numel(), device=ids_TK.device) - starts_E[flat_ids[by_expert]]
    )
    keep = torch.empty_like(flat_ids, dtype=torch.bool)
    keep[by_expert] = rank_in_expert < capacity
    return keep.view_as(ids_TK)
