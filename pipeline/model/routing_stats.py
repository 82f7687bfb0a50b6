"""What a MoE layer reports about its routing: per-forward statistics and load summaries.

The training logs (``router/layer<i>/...``), the routing health of a run and the evaluation's
routing analysis all read these, so one definition serves all three.

Shapes (``docs/ARCHITECTURE.md``): T tokens, E experts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RouterStats:
    """Detached per-layer statistics of one forward, for logging.

    ``load (E,)``: fraction of the router's assignments per expert (before capacity drops).
    ``mean_prob (E,)``: mean router probability per expert.
    ``dropped_fraction``: token choice: fraction of assignments dropped by capacity;
    expert choice: fraction of tokens no expert picked.
    ``entropy``: mean router entropy in nats (ln E = uniform).
    ``counts (E,)``: assignments per expert (before capacity drops).
    ``losses``: the unweighted router losses by name (``load_balance``, ``z_loss``,
    ``seq_balance``).
    """

    load: torch.Tensor
    mean_prob: torch.Tensor
    dropped_fraction: torch.Tensor
    entropy: torch.Tensor
    counts: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


def router_entropy(probs_TE: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of the entropy (nats) of the router distribution; ln E when uniform."""
    return torch.special.entr(probs_TE).sum(dim=-1).mean()


def load_summary(load_E: torch.Tensor) -> dict[str, float]:
    """Summary of one layer's expert load fractions.

    ``max_over_mean`` is the overload factor (1 = perfectly balanced; with a capacity factor
    below it, tokens are dropped) and ``cv`` the coefficient of variation (std / mean).
    """
    load_E = load_E.double()
    mean = load_E.mean()
    return {
        "max_over_mean": (load_E.max() / mean).item(),
        "cv": (load_E.std(unbiased=False) / mean).item(),
    }
