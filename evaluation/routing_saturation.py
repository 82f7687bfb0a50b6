"""Router saturation: how much of the final routing was already decided part-way through
training (OLMoE §5).

Training keeps the weights after given fractions of its steps (``train.monitor.
snapshot_fractions``, :mod:`pipeline.train.snapshots`). Each snapshot routes the first
``evaluate.routing_snapshot_tokens`` of the test tokens the final model routed (a forward pass of
its own, so fewer tokens than the final model's pass), and per MoE layer its **saturation** is
the mean over those tokens of ``|top-k at the snapshot ∩ top-k of the final model| / k``: 1 when
every token already went to its final experts, ``k / E`` in expectation for routing unrelated
to the final one (each of the ``k`` final experts is among ``k`` of ``E`` with chance ``k / E``).

Metrics: ``routing/saturation/tokens`` (how many were compared),
``routing/layer<i>/saturation/at_<p>pct`` per snapshot (``p``: percent of training) and
``routing/saturation/at_<p>pct``, the mean over layers. Files, in ``saturation/``:
``saturation.csv`` (``fraction, layer, saturation``) and ``saturation.png`` (saturation over
training, one line per layer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.plots import line_plot
from evaluation.routing_trace import RoutingTrace
from pipeline.errors import PipelineError
from pipeline.io import write_csv


def saturation(final_NK: np.ndarray, earlier_NK: np.ndarray) -> float:
    """Mean over tokens of the fraction of each token's final ``k`` experts that the earlier
    routing chose too (an empty slot, -1, matches nothing)."""
    same_NKK = (final_NK[:, :, None] == earlier_NK[:, None, :]) & (final_NK[:, :, None] >= 0)
    return float(same_NKK.any(2).sum(1).mean() / final_NK.shape[1])


def percent(fraction: float) -> str:
    """``0.1`` → ``"10"``: how a fraction of training appears in metric keys and labels."""
    return f"{100 * fraction:g}"


@dataclass(frozen=True)
class RouterSaturation:
    """``values[fraction]``: per MoE layer, the saturation of the snapshot at ``fraction``."""

    values: dict[float, list[float]]
    tokens: int
    top_k: int
    num_experts: int

    @classmethod
    def from_traces(
        cls, final: RoutingTrace, earlier: dict[float, RoutingTrace]
    ) -> RouterSaturation:
        """Each earlier trace against the final one on the tokens it routed (the first of the
        final trace's: ``evaluate.routing_snapshot_tokens``)."""
        values = {}
        for fraction, trace in sorted(earlier.items()):
            try:
                rows = final.rows_at(trace.positions_N)
            except KeyError:
                rows = None
            if rows is None or len(trace.expert_ids) != len(final.expert_ids):
                raise PipelineError(
                    f"the snapshot at {percent(fraction)} % of training did not route tokens of "
                    "the final model's through as many MoE layers: re-run the train stage"
                )
            values[fraction] = [
                saturation(f[rows], e)
                for f, e in zip(final.expert_ids, trace.expert_ids, strict=True)
            ]
        tokens = min(len(trace.positions_N) for trace in earlier.values())
        return cls(values, tokens, final.top_k, final.num_experts)

    def metrics(self) -> dict[str, float]:
        out: dict[str, float] = {"routing/saturation/tokens": self.tokens}
        for fraction, per_layer in self.values.items():
            at = f"at_{percent(fraction)}pct"
            out.update({f"routing/layer{i}/saturation/{at}": v for i, v in enumerate(per_layer)})
            out[f"routing/saturation/{at}"] = float(np.mean(per_layer))
        return out

    def write(self, out_dir: Path) -> list[Path]:
        write_csv(
            out_dir / "saturation.csv",
            ["fraction", "layer", "saturation"],
            ([f, i, v] for f, per_layer in self.values.items() for i, v in enumerate(per_layer)),
        )
        fractions = list(self.values)
        png = out_dir / "saturation.png"
        unrelated = self.top_k / self.num_experts
        line_plot(
            [100 * f for f in fractions],
            {
                f"layer {i}": [self.values[f][i] for f in fractions]
                for i in range(len(self.values[fractions[0]]))
            },
            "Router saturation: final top-k already chosen at the snapshot",
            "snapshot (% of training steps)",
            "saturation",
            png,
            reference=(unrelated, f"unrelated routing (k/E = {unrelated:.2f})"),
        )
        return [png]
