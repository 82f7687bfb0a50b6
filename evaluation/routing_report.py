"""Expert load, router entropy and dropped fraction per MoE layer, on any corpus.

* ``load[e]``: the fraction of (token, slot) assignments expert ``e`` received over all analysed
  tokens (so it sums to 1), and its ``max_over_mean`` / ``cv`` summaries (the names the training
  logs use);
* ``entropy``: the mean per-token entropy of the router's distribution (nats), and
  ``dropped_fraction``: the fraction of assignments an expert's capacity turned away, both
  token-weighted means of the model's per-batch router statistics.

Files: ``expert_load.csv`` (``layer, expert, load``) and ``expert_load.png`` (layers × experts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluation.plots import heatmap
from evaluation.routing_trace import RoutingTrace
from pipeline.io import write_csv
from pipeline.model.routing_stats import load_summary


@dataclass(frozen=True)
class LoadReport:
    """``load``: per MoE layer, ``(E,)`` fractions of the assignments; ``entropy`` and
    ``dropped``: per layer, as the trace recorded them."""

    tokens: int
    load: list[np.ndarray]
    entropy: list[float]
    dropped: list[float]

    @classmethod
    def from_trace(cls, trace: RoutingTrace) -> LoadReport:
        loads = []
        for layer in range(len(trace.expert_ids)):
            per_expert = trace.chosen(layer).sum(0)
            loads.append(per_expert / max(per_expert.sum(), 1))
        return cls(trace.tokens, loads, trace.entropy, trace.dropped)

    def metrics(self) -> dict[str, float]:
        """Flat ``routing/...`` keys for ``metrics/eval.json``."""
        out: dict[str, float] = {"routing/tokens": self.tokens}
        for index, load in enumerate(self.load):
            prefix = f"routing/layer{index}"
            balance = load_summary(torch.from_numpy(load))
            out[f"{prefix}/max_over_mean"] = balance["max_over_mean"]
            out[f"{prefix}/cv"] = balance["cv"]
            out[f"{prefix}/entropy"] = self.entropy[index]
            out[f"{prefix}/dropped_fraction"] = self.dropped[index]
        return out

    def write(self, out_dir: Path) -> list[Path]:
        """``expert_load.csv`` and ``.png`` into ``out_dir``; returns the PNG paths (none for a
        dense model: nothing is routed)."""
        write_csv(
            out_dir / "expert_load.csv",
            ["layer", "expert", "load"],
            ([i, e, float(v)] for i, load in enumerate(self.load) for e, v in enumerate(load)),
        )
        if not self.load:
            (out_dir / "expert_load.png").unlink(missing_ok=True)
            return []
        png = out_dir / "expert_load.png"
        heatmap(
            np.stack(self.load),
            [f"layer {i}" for i in range(len(self.load))],
            [str(e) for e in range(len(self.load[0]))],
            f"Expert load on the test split ({self.tokens} tokens)",
            "fraction of assignments",
            png,
        )
        return [png]
