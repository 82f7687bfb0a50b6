"""Where each word category is routed, only where categories are known.

The prepare stage writes every word's category for sources that tag them (the synthetic one);
for others ``words`` is empty and this analysis is skipped whole: no file, metric or card
section, since every token would be ``other``. Categories (:mod:`evaluation.categories`) are
computed once over the whole analysed stretch of the file, one token past the last routed
one, so a word split across two windows keeps its category.

``assignments[c, e]``: assignments of tokens of category ``c`` to expert ``e`` (a token counts
once per slot); the heatmap row-normalises it (where does each category go?).

Files, in ``specialisation/``: ``specialisation.csv`` (``layer, category, expert, assignments,
fraction``) and ``layer<i>.png``. Metrics: ``routing/tokens/<category>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.categories import CATEGORIES, token_categories
from evaluation.plots import heatmap
from evaluation.routing_trace import RoutingTrace
from pipeline.data.word_categories import WordCategories
from pipeline.io import write_csv


@dataclass(frozen=True)
class CategoryRouting:
    """``category_tokens``: ``(W,)`` routed tokens per category; ``assignments``: per MoE
    layer, ``(W, E)`` assignments per category and expert."""

    category_tokens: np.ndarray
    assignments: list[np.ndarray]

    @classmethod
    def from_trace(
        cls, trace: RoutingTrace, tokens: np.ndarray, tok_bytes: Sequence[bytes],
        words: WordCategories,
    ) -> CategoryRouting:  # fmt: skip
        stretch = np.asarray(tokens[: trace.positions_N.max() + 2]).tolist()
        category_N = token_categories(stretch, tok_bytes, words)[trace.positions_N]
        return cls(
            np.bincount(category_N, minlength=len(CATEGORIES)),
            [
                trace.counts_by(category_N, len(CATEGORIES), layer)
                for layer in range(len(trace.expert_ids))
            ],
        )

    def specialisation(self, layer: int) -> np.ndarray:
        """``(W, E)``: each category's assignments as fractions (rows of unseen categories 0)."""
        counts = self.assignments[layer]
        rows = counts.sum(1, keepdims=True)
        return np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)

    def metrics(self) -> dict[str, float]:
        return {
            f"routing/tokens/{category}": int(count)
            for category, count in zip(CATEGORIES, self.category_tokens, strict=True)
        }

    def write(self, out_dir: Path) -> list[Path]:
        """The CSV and one heatmap per MoE layer into ``out_dir``; returns the PNG paths."""
        layers = range(len(self.assignments))
        write_csv(
            out_dir / "specialisation.csv",
            ["layer", "category", "expert", "assignments", "fraction"],
            (
                [i, CATEGORIES[c], e, int(self.assignments[i][c, e]), float(share[c, e])]
                for i in layers
                for share in [self.specialisation(i)]
                for c, e in np.ndindex(share.shape)
            ),
        )
        rows = [f"{c} ({n})" for c, n in zip(CATEGORIES, self.category_tokens, strict=True)]
        pngs = []
        for i in layers:
            pngs.append(out_dir / f"layer{i}.png")
            heatmap(
                self.specialisation(i),
                rows,
                [str(e) for e in range(self.assignments[i].shape[1])],
                f"Layer {i}: where each word category is routed",
                "fraction of the category's assignments",
                pngs[-1],
            )
        return pngs
