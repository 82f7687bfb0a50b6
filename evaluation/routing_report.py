"""Routing statistics accumulated over batches, and their outputs: metrics, CSV and heatmaps.

Per MoE layer:

* ``load[e]``: the fraction of (token, slot) assignments expert ``e`` received, summed over all
  analysed tokens (so it sums to 1), and its ``max_over_mean`` / ``cv`` summaries (the names the
  training logs use);
* ``entropy``: the mean per-token entropy of the router's distribution (nats), and
  ``dropped_fraction``: the fraction of assignments an expert's capacity turned away, both
  token-weighted means of the model's per-batch router statistics;
* ``specialisation[c, e]``: assignments of tokens of word category ``c`` to expert ``e``; the
  heatmap row-normalises it (where does each category go?). A token counts once per slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from evaluation.categories import CATEGORIES
from evaluation.plots import heatmap
from pipeline.io import write_csv, write_json
from pipeline.model.routing_stats import load_summary


@dataclass
class LayerRouting:
    """Running sums for one MoE layer."""

    num_experts: int
    assignments: np.ndarray = field(init=False)  # (W, E) int64: W word categories
    entropy_sum: float = 0.0
    dropped_sum: float = 0.0
    tokens: int = 0

    def __post_init__(self) -> None:
        self.assignments = np.zeros((len(CATEGORIES), self.num_experts), dtype=np.int64)

    def add(
        self, expert_ids: torch.Tensor, categories: np.ndarray, entropy: float, dropped: float
    ) -> None:
        """``expert_ids`` ``(N, k)`` for the batch's ``N`` tokens (in the order of
        ``categories``); ``entropy``/``dropped`` are the batch means the model reported."""
        n, k = expert_ids.shape
        flat = np.repeat(categories, k) * self.num_experts + expert_ids.reshape(-1).cpu().numpy()
        counts = np.bincount(flat, minlength=len(CATEGORIES) * self.num_experts)
        self.assignments += counts.reshape(len(CATEGORIES), self.num_experts)
        self.entropy_sum += entropy * n
        self.dropped_sum += dropped * n
        self.tokens += n

    @property
    def load(self) -> np.ndarray:
        per_expert = self.assignments.sum(0)
        return per_expert / max(per_expert.sum(), 1)

    def specialisation(self) -> np.ndarray:
        """``(W, E)``: each category's assignments as fractions (rows of unseen categories 0)."""
        rows = self.assignments.sum(1, keepdims=True)
        return np.divide(
            self.assignments, rows, out=np.zeros(self.assignments.shape), where=rows > 0
        )


@dataclass
class RoutingReport:
    """All MoE layers (keyed by the model's layer index) and the category of every token."""

    layers: dict[int, LayerRouting]
    category_tokens: np.ndarray = field(default_factory=lambda: np.zeros(len(CATEGORIES), np.int64))

    @property
    def tokens(self) -> int:
        return int(self.category_tokens.sum())

    def metrics(self) -> dict[str, float]:
        """Flat ``routing/...`` keys for ``metrics/eval.json``."""
        out: dict[str, float] = {"routing/tokens": self.tokens}
        for index, layer in self.layers.items():
            prefix = f"routing/layer{index}"
            balance = load_summary(torch.from_numpy(layer.load))
            out[f"{prefix}/max_over_mean"] = balance["max_over_mean"]
            out[f"{prefix}/cv"] = balance["cv"]
            out[f"{prefix}/entropy"] = layer.entropy_sum / max(layer.tokens, 1)
            out[f"{prefix}/dropped_fraction"] = layer.dropped_sum / max(layer.tokens, 1)
        for category, count in zip(CATEGORIES, self.category_tokens, strict=True):
            out[f"routing/tokens/{category}"] = int(count)
        return out

    def write(self, out_dir: Path) -> list[Path]:
        """CSV/JSON data and PNG heatmaps into ``out_dir``; returns the PNG paths.

        The per-layer heatmaps go to ``out_dir/specialisation/layer<i>.png``: a directory, so
        that DVC can declare them whatever the number of layers."""
        self._write_data(out_dir)
        per_layer = out_dir / "specialisation"
        per_layer.mkdir(parents=True, exist_ok=True)
        for stale in per_layer.glob("layer*.png"):  # a model with fewer layers than the last
            stale.unlink()
        if not self.layers:  # a dense model: nothing is routed
            return []
        indices = sorted(self.layers)
        experts = [str(e) for e in range(self.layers[indices[0]].num_experts)]
        pngs = [out_dir / "expert_load.png"]
        heatmap(
            np.stack([self.layers[i].load for i in indices]),
            [f"layer {i}" for i in indices],
            experts,
            f"Expert load on the test split ({self.tokens} tokens)",
            "fraction of assignments",
            pngs[0],
        )
        rows = [f"{c} ({n})" for c, n in zip(CATEGORIES, self.category_tokens, strict=True)]
        for i in indices:
            pngs.append(per_layer / f"layer{i}.png")
            heatmap(
                self.layers[i].specialisation(),
                rows,
                experts,
                f"Layer {i}: where each word category is routed",
                "fraction of the category's assignments",
                pngs[-1],
            )
        return pngs

    def _write_data(self, out_dir: Path) -> None:
        layers = sorted(self.layers.items())
        write_csv(
            out_dir / "expert_load.csv",
            ["layer", "expert", "load"],
            ([i, e, float(load)] for i, layer in layers for e, load in enumerate(layer.load)),
        )
        write_csv(
            out_dir / "specialisation.csv",
            ["layer", "category", "expert", "assignments", "fraction"],
            (
                [i, CATEGORIES[c], e, int(layer.assignments[c, e]), float(share[c, e])]
                for i, layer in layers
                for share in [layer.specialisation()]
                for c in range(len(CATEGORIES))
                for e in range(layer.num_experts)
            ),
        )
        write_json(
            out_dir / "routing.json",
            {
                "categories": list(CATEGORIES),
                "category_tokens": self.category_tokens.tolist(),
                "layers": {
                    str(i): {"load": layer.load.tolist(), "assignments": layer.assignments.tolist()}
                    for i, layer in layers
                },
            },
        )
