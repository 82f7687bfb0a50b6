"""What a MoE layer reports about its routing: per-forward statistics, load summaries, the
routing-health measures and the routing digest's hash.

The training logs (``router/layer<i>/...``), the routing health of a run and the evaluation's
routing analysis all read these, so one definition serves all three.

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots, E experts.
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
    ``expert_ids (T, K)``: this rank's routing decisions (-1 = empty slot; before capacity
    drops), for the routing digest.
    ``losses``: the unweighted router losses by name: the balance loss of the layer's scope
    (``load_balance``, ``seq_balance`` or ``global_balance``) and ``z_loss``.
    """

    load: torch.Tensor
    mean_prob: torch.Tensor
    dropped_fraction: torch.Tensor
    entropy: torch.Tensor
    counts: torch.Tensor
    expert_ids: torch.Tensor
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


def max_violation(counts_E: torch.Tensor) -> torch.Tensor:
    """MaxVio (Wang et al. 2024, arXiv:2408.15664): ``max_e (load_e - mean) / mean``
    of one layer's assignment counts; 0 when balanced, ``E / k - 1`` when every token picks the
    same k experts. 0 for a layer that routed nothing."""
    mean = counts_E.double().mean()
    return torch.where(mean > 0, (counts_E.double().max() - mean) / mean, 0.0)


def dead_fraction(counts_E: torch.Tensor, threshold: float) -> torch.Tensor:
    """Fraction of experts whose count is below ``threshold`` × the mean count."""
    counts = counts_E.double()
    return (counts < threshold * counts.mean()).double().mean()


# splitmix64's increment and multipliers (Steele, Lea and Flood 2014), as signed 64-bit ints.
_GOLDEN, _MIX1, _MIX2 = (
    c - 2**64 for c in (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
)


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` keeps the sign)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser, elementwise on int64 (products wrap modulo 2⁶⁴)."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


def routing_hash(ids_TK: torch.Tensor, first_position: int, layer: int, num_layers: int,
                 num_experts: int) -> torch.Tensor:  # fmt: skip
    """0-dim int64: the sum (modulo 2⁶⁴) of a 64-bit hash of every decision ``(token position,
    layer, expert)`` in ``ids_TK``, token t at position ``first_position + t``; empty slots
    (-1) are left out, and the slot order does not enter (it is the order of the scores, not a
    decision). A sum of hashes is a multiset hash: the parts of one step computed on different
    micro-batches, ranks or layers add up to the same value in any order, so it is reduced by
    one all-reduce, and a single changed decision changes it with probability 1 - 2⁻⁶⁴."""
    t = torch.arange(ids_TK.shape[0], device=ids_TK.device, dtype=torch.int64)
    position_T = (t + first_position) * num_layers + layer
    keys_TK = position_T[:, None] * num_experts + ids_TK
    return torch.where(ids_TK >= 0, _mix64(keys_TK), 0).sum()
