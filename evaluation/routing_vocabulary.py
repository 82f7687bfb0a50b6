"""Vocabulary specialisation: whether frequent token ids keep going to one expert (OLMoE §5).

For each of the ``evaluate.routing_vocab_tokens`` most frequent token ids among the analysed
tokens that occur at least ``evaluate.routing_vocab_min_count`` times, and per MoE layer: its
**top expert** (the one most of its occurrences chose) and **top share**, the fraction of its
occurrences routed there (:mod:`evaluation.routing_shares`). Each occurrence makes ``k`` routes
to ``k`` different experts, so the top share runs from ``k / E`` (a router that spreads the token
uniformly) to 1 (every occurrence goes to that expert); as a share of the token's routes it
would be ``1 / k`` of this.

Metrics: ``routing/vocab/token_ids`` (how many ids qualified) and per layer
``routing/layer<i>/vocab/top_share`` (mean over those ids) beside ``.../top_share_shuffled``
(the same with token ids permuted over the analysed positions: routing that ignores the id).

Files, in ``vocabulary/``: ``vocabulary.csv`` (``layer, token_id, token, count, top_expert,
top_share, top_share_shuffled``; ``token`` is the decoded text, spaces shown as ``␣``) and
``vocabulary.png`` (token ids × layers, each cell the top expert and its share).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.plots import heatmap
from evaluation.routing_shares import GroupShares, top_share_metrics
from evaluation.routing_trace import RoutingTrace
from pipeline.io import write_csv

_VISIBLE = str.maketrans({" ": "␣", "\n": "\\n", "\t": "\\t", "\r": "\\r"})


def display_token(piece: bytes) -> str:
    """A token's text with whitespace made visible; ``<special>`` for a special token."""
    return piece.decode("utf-8", errors="replace").translate(_VISIBLE) if piece else "<special>"


@dataclass(frozen=True)
class VocabularyRouting:
    """``token_ids``: the analysed ids, most frequent first (``counts`` occurrences each);
    ``layers``: per MoE layer, their :class:`GroupShares` (one group per id)."""

    token_ids: np.ndarray
    counts: np.ndarray
    texts: list[str]
    top_k: int
    layers: list[GroupShares]

    @classmethod
    def from_trace(
        cls, trace: RoutingTrace, tok_bytes: Sequence[bytes], top: int, min_count: int
    ) -> VocabularyRouting:
        occurrences = np.bincount(trace.token_ids_N, minlength=len(tok_bytes))
        order = np.lexsort((np.arange(len(occurrences)), -occurrences))  # ties: the lower id
        ids = order[:top][occurrences[order[:top]] >= min_count]
        layers = [
            GroupShares.from_trace(trace, layer, trace.token_ids_N, len(occurrences))
            for layer in range(len(trace.expert_ids))
        ]
        return cls(
            ids,
            occurrences[ids],
            [display_token(tok_bytes[i]) for i in ids],
            trace.top_k,
            [GroupShares(s.sizes_G[ids], s.counts_GE[ids], s.shuffled_GE[ids]) for s in layers],
        )

    def metrics(self) -> dict[str, float]:
        return {
            "routing/vocab/token_ids": len(self.token_ids),
            **top_share_metrics(self.layers, "vocab"),
        }

    def write(self, out_dir: Path) -> list[Path]:
        write_csv(
            out_dir / "vocabulary.csv",
            [
                "layer", "token_id", "token", "count", "top_expert", "top_share",
                "top_share_shuffled",
            ],
            (
                [layer, int(token), text, int(count), int(expert), float(top), float(shuffled)]
                for layer, shares in enumerate(self.layers)
                for token, text, count, expert, top, shuffled in zip(
                    self.token_ids, self.texts, self.counts, shares.top_expert_G,
                    shares.top_share_G(), shares.top_share_G(shuffled=True), strict=True,
                )
            ),
        )  # fmt: skip
        top_LG = np.stack([shares.top_share_G() for shares in self.layers])
        experts_LG = np.stack([shares.top_expert_G for shares in self.layers])
        num_experts = self.layers[0].counts_GE.shape[1]
        png = out_dir / "vocabulary.png"
        heatmap(
            top_LG.T,
            [f"{text} ({n})" for text, n in zip(self.texts, self.counts, strict=True)],
            [f"layer {i}" for i in range(len(self.layers))],
            f"Frequent tokens: top expert and its share (k/E = {self.top_k / num_experts:.2f})",
            "fraction of the token's occurrences routed to its top expert",
            png,
            xlabel="MoE layer",
            cell_text=np.array(
                [
                    [f"e{e} {s:.2f}" for e, s in zip(*row, strict=True)]
                    for row in zip(experts_LG.T, top_LG.T, strict=True)
                ]
            ),  # fmt: skip
        )
        return [png]
