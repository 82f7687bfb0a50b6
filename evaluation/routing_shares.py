"""How strongly a group of tokens (a source domain, a token id) prefers one expert.

Following OLMoE's domain and vocabulary specialisation (Muennighoff et al. 2024, §5), the
share of a group's tokens routed to expert ``e`` is the fraction of the group's tokens that
chose ``e`` among their ``k`` experts; over the experts the shares sum to ``k``. The group's
**top share** is its largest share: 1 when every token of the group goes to one expert (among
others), ``k / E`` for a router that spreads the group uniformly.

Two references sit beside it, because the top share of a finite group exceeds ``k / E`` even
when routing ignores the group: the layer's load imbalance raises it, and so does taking a
maximum over ``E`` noisy shares. The **shuffled** top share is the same statistic after the group
labels are permuted over the analysed tokens (a fixed seed): same group sizes, same layer load,
no link between group and routing. A group prefers an expert only as far as its top share
exceeds the shuffled one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.routing_trace import RoutingTrace

SHUFFLE_SEED = 0  # fixed: the reference is part of files DVC tracks and must not vary by run


@dataclass(frozen=True)
class GroupShares:
    """One MoE layer: ``counts_GE[g, e]`` tokens of group ``g`` that chose expert ``e``
    (``shuffled_GE`` the same with the labels permuted), ``sizes_G`` tokens per group."""

    sizes_G: np.ndarray
    counts_GE: np.ndarray
    shuffled_GE: np.ndarray

    @classmethod
    def from_trace(
        cls, trace: RoutingTrace, layer: int, group_N: np.ndarray, groups: int
    ) -> GroupShares:
        shuffled_N = np.random.default_rng(SHUFFLE_SEED).permutation(group_N)
        return cls(
            np.bincount(group_N, minlength=groups),
            trace.counts_by(group_N, groups, layer),
            trace.counts_by(shuffled_N, groups, layer),
        )

    def shares(self, shuffled: bool = False) -> np.ndarray:
        """``(G, E)``: the fraction of each group's tokens routed to each expert (0 for an
        empty group)."""
        counts = self.shuffled_GE if shuffled else self.counts_GE
        sizes = self.sizes_G[:, None]
        return np.divide(counts, sizes, out=np.zeros(counts.shape), where=sizes > 0)

    @property
    def top_expert_G(self) -> np.ndarray:
        """Each group's most chosen expert (the lowest id on a tie)."""
        return self.counts_GE.argmax(1)

    def top_share_G(self, shuffled: bool = False) -> np.ndarray:
        return self.shares(shuffled).max(1)


def top_share_metrics(layers: list[GroupShares], group: str) -> dict[str, float]:
    """``routing/layer<i>/<group>/top_share`` (mean over the groups) and its shuffled
    reference ``.../top_share_shuffled``, per MoE layer."""
    out = {}
    for index, shares in enumerate(layers):
        prefix = f"routing/layer{index}/{group}"
        out[f"{prefix}/top_share"] = float(shares.top_share_G().mean())
        out[f"{prefix}/top_share_shuffled"] = float(shares.top_share_G(shuffled=True).mean())
    return out
