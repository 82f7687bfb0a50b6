"""Expert co-activation: which experts a token chooses together (OLMoE §5).

Per MoE layer, ``both[i, j]`` counts the tokens that chose experts ``i`` and ``j`` among their
``k``, and the co-activation of ``j`` given ``i`` is ``P(j | i) = both[i, j] / both[i, i]``: of the
tokens routed to ``i``, the fraction also routed to ``j``. A row sums to ``k - 1`` over ``j ≠ i``,
so a router picking ``k`` distinct experts uniformly at random gives ``(k - 1) / (E - 1)``
everywhere; high values mark pairs that act as one (redundant experts). With ``k = 1`` nothing
is co-activated and the analysis is skipped.

Metric per layer: ``routing/layer<i>/coactivation/max``, the largest ``P(j | i)``, ``j ≠ i``.
Files, in ``coactivation/``: ``coactivation.csv`` (``layer, expert, other, tokens_both,
tokens_expert, p_other_given_expert``) and ``layer<i>.png`` (the ``E × E`` matrix, diagonal
blank).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.plots import heatmap
from evaluation.routing_trace import RoutingTrace
from pipeline.io import write_csv


@dataclass(frozen=True)
class CoActivation:
    """``both``: per MoE layer, the ``(E, E)`` token counts (diagonal: tokens that chose each)."""

    both: list[np.ndarray]

    @classmethod
    def from_trace(cls, trace: RoutingTrace) -> CoActivation:
        both = []
        for layer in range(len(trace.expert_ids)):
            chosen_NE = trace.chosen(layer).astype(np.int64)
            both.append(chosen_NE.T @ chosen_NE)
        return cls(both)

    def conditional(self, layer: int) -> np.ndarray:
        """``(E, E)``: ``P(j | i)`` in row ``i``, column ``j``; NaN on the diagonal and in the
        rows of experts no token chose (undefined)."""
        both = self.both[layer]
        chose = np.diag(both)[:, None].astype(np.float64)
        p = np.divide(both, chose, out=np.full(both.shape, np.nan), where=chose > 0)
        np.fill_diagonal(p, np.nan)
        return p

    def metrics(self) -> dict[str, float]:
        return {
            f"routing/layer{index}/coactivation/max": float(np.nanmax(self.conditional(index)))
            for index in range(len(self.both))
        }

    def write(self, out_dir: Path) -> list[Path]:
        write_csv(
            out_dir / "coactivation.csv",
            ["layer", "expert", "other", "tokens_both", "tokens_expert", "p_other_given_expert"],
            (
                [index, i, j, int(both[i, j]), int(both[i, i]), float(p[i, j])]
                for index, both in enumerate(self.both)
                for p in [self.conditional(index)]
                for i, j in np.ndindex(both.shape)
                if i != j
            ),
        )
        pngs = []
        for index, both in enumerate(self.both):
            experts = [str(e) for e in range(both.shape[0])]
            pngs.append(out_dir / f"layer{index}.png")
            heatmap(
                self.conditional(index),
                experts,
                experts,
                f"Layer {index}: P(expert j chosen | expert i chosen)",
                "fraction of expert i's tokens also routed to j",
                pngs[-1],
                xlabel="expert j",
                ylabel="expert i",
            )
        return pngs
