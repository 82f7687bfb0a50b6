"""Routing health per MoE layer, the guard that acts on it, and the routing digest.

Health, measured at every logging step (``train.monitor.log_every``) for each MoE layer, logged
to MLflow as ``router/layer<i>/<name>``, kept in the history (``plots/train/routing.csv``, a DVC
plot) and, for the last logging step, in ``metrics/train.json``
(``routing_health/layer<i>/<name>``, and ``routing_health/step``):

- ``max_vio``: MaxVio (Wang et al. 2024, arXiv:2408.15664) of the logging step's assignments,
  every micro-batch and every rank of the step (the counts arrive summed over the ranks);
- ``dead_fraction``: the fraction of experts whose share of the assignments over the steps since
  the previous logging step is below ``train.monitor.dead_expert_load`` × the mean share;
- ``entropy`` and ``dropped_fraction``: the step's mean router entropy (nats) and capacity drop
  rate (the monitor's ``router/layer<i>/entropy`` and ``dropped_fraction``);
- ``bias_range``: max − min of the ``sigmoid_bias`` router's balancing bias (that router only).

The guard (``train.routing_guard``) reads the health history: when a layer's MaxVio or dead
fraction has been above its limit at every logging step for ``patience_steps`` optimizer steps,
it warns once per such stretch, or stops the run with :class:`RoutingCollapseError` (the stage's
MLflow run ends FAILED, as for a non-finite loss). Every rank measures the same numbers and so
decides alike: no rank is left waiting in a collective.

Digest. Each optimizer step's routing decisions (the expert ids of every token in every MoE
layer, before capacity drops) are hashed on the device into one 64-bit number
(:func:`pipeline.model.routing_stats.routing_hash`: a sum of per-decision hashes keyed by the
token's position in the step's global batch, so micro-batches and ranks add up to the same
value whatever the layout), reduced over the ranks with the losses and recorded per step in the
history (``plots/train/routing_digest.csv``, checkpointed, so a resumed run's sequence is the
uninterrupted run's). Each step also gets a chained digest, the SHA-256 of the previous chain and
the step's digest: two runs whose chains agree at step s routed identically at every step up to
s. MLflow logs the chain at logging steps as the metric ``routing/digest``, its first 12 hex
digits as an integer: 48 bits, exact in the float64 MLflow stores (a per-step tag would cost one
tracking call per step, and a metric of the full 64 bits would be rounded); the final chain is
``routing_digest`` in ``metrics/train.json``. Nothing in either depends on the execution (no time,
no run id), so an identical re-run leaves identical files.
"""

from __future__ import annotations

import hashlib
import logging

import torch

from pipeline.config import RoutingGuardConfig
from pipeline.errors import PipelineError
from pipeline.model import RouterStats
from pipeline.model.routing_stats import dead_fraction, max_violation, routing_hash

log = logging.getLogger(__name__)

GUARDED = ("max_vio", "dead_fraction")  # the health measures train.routing_guard limits
DIGEST_METRIC = "routing/digest"


class RoutingCollapseError(PipelineError):
    """A MoE layer's routing stayed collapsed past ``train.routing_guard``'s patience."""


class RoutingHealth:
    """Accumulates each layer's expert counts (summed over ranks already) per step and over the
    logging window, on the device; :meth:`measure` turns them into the health measures."""

    def __init__(self, dead_expert_load: float):
        self.dead_expert_load = dead_expert_load
        self._step: list[torch.Tensor] = []  # this step's counts, per layer
        self._last_step: list[torch.Tensor] = []
        self._window: list[torch.Tensor] = []  # counts since the last measure, per layer

    def add_micro_batch(self, stats: list[RouterStats]) -> None:
        self._step = _added(self._step, [layer.counts.detach().double() for layer in stats])

    def end_step(self) -> None:
        self._window = _added(self._window, self._step)
        self._last_step, self._step = self._step, []

    def measure(self, moe_layers: list) -> list[dict[str, float]]:
        """Per layer ``max_vio``, ``dead_fraction`` and, for a biased router, ``bias_range``;
        one host sync. Starts the next window."""
        values = []
        for counts_E, window_E, layer in zip(
            self._last_step, self._window, moe_layers, strict=True
        ):
            row = [max_violation(counts_E), dead_fraction(window_E, self.dead_expert_load)]
            bias_E = getattr(layer.router, "expert_bias", None)
            if bias_E is not None:
                row.append((bias_E.max() - bias_E.min()).double())
            values.append(torch.stack(row))
        self._window = []
        names = ("max_vio", "dead_fraction", "bias_range")
        return [dict(zip(names, row.tolist(), strict=False)) for row in values]

    def state_dict(self) -> list[list[float]]:
        """The open window (a checkpoint between logging steps must carry it)."""
        return [w.tolist() for w in self._window]

    def load_state_dict(self, window: list[list[float]]) -> None:
        """On the CPU: the first step after a resume moves it to the counts' device."""
        self._window = [torch.tensor(w, dtype=torch.float64) for w in window]


def _added(total: list[torch.Tensor], part: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-layer sums; an empty ``total`` is none yet (a window restored from a checkpoint is
    on the CPU: it moves to the counts' device)."""
    if not total:
        return part
    return [t.to(p.device) + p for t, p in zip(total, part, strict=True)]


class RoutingGuard:
    """Acts on the health history (see the module docstring)."""

    def __init__(self, cfg: RoutingGuardConfig):
        self.cfg = cfg

    def check(self, rows: list[dict[str, float]], step: int) -> None:
        """``rows``: the whole health history; the rows of ``step`` are its last ones."""
        for metric in GUARDED:
            limit = getattr(self.cfg, metric)
            if limit is None:
                continue
            for row in (r for r in rows if r["step"] == step):
                streak = _violating_steps(rows, row["layer"], metric, limit)
                if (
                    streak
                    and streak[-1] - streak[0] >= self.cfg.patience_steps
                    and (len(streak) == 1 or streak[-2] - streak[0] < self.cfg.patience_steps)
                ):
                    self._act(row, metric, limit, streak[0])

    def _act(self, row: dict[str, float], metric: str, limit: float, since: int) -> None:
        message = (
            f"train: MoE layer {row['layer']} routing: {metric} = {row[metric]:.4g} above "
            f"train.routing_guard.{metric} = {limit} at every logging step from step {since} "
            f"to step {row['step']} (patience {self.cfg.patience_steps} steps)"
        )
        if self.cfg.action == "stop":
            raise RoutingCollapseError(
                f"{message}; training stopped. Balance the router (train.model.moe."
                "aux_loss_weight and balance, or the sigmoid_bias router's bias_update_rate), "
                "or set train.routing_guard.action: warn to train on"
            )
        log.warning("%s: the router is collapsing", message)


def _violating_steps(rows: list[dict], layer: int, metric: str, limit: float) -> list[int]:
    """The logged steps of ``layer``'s current stretch above ``limit``, oldest first."""
    steps: list[int] = []
    for row in reversed([r for r in rows if r["layer"] == layer]):
        if not row[metric] > limit:
            break
        steps.append(row["step"])
    return steps[::-1]


class RoutingDigest:
    """Per-step routing hashes on the device until :meth:`record`, which reduces them over the
    ranks (one collective) and appends ``{"step", "digest", "chain"}`` rows to the history."""

    def __init__(self, micro_batch_size: int, seq_len: int):
        self.tokens_per_micro_batch = micro_batch_size * seq_len
        self._sum: torch.Tensor | None = None
        self._micro_batches = 0  # micro-batches of the current step so far
        self._pending: list[tuple[int, torch.Tensor]] = []

    def add_micro_batch(self, stats: list[RouterStats], rank: int, world: int) -> None:
        """This rank's micro-batch: rank r of micro-batch m holds the step's windows from
        ``(m · world + r) · micro_batch_size`` on (:class:`~pipeline.train.data.WindowStream`)."""
        first = (self._micro_batches * world + rank) * self.tokens_per_micro_batch
        for layer, layer_stats in enumerate(stats):
            ids_TK = layer_stats.expert_ids
            part = routing_hash(ids_TK, first, layer, len(stats), layer_stats.counts.numel())
            self._sum = part if self._sum is None else self._sum + part
        self._micro_batches += 1

    def end_step(self, step: int) -> None:
        if self._sum is not None:
            self._pending.append((step, self._sum))
        self._sum, self._micro_batches = None, 0

    def record(self, strategy, rows: list[dict]) -> None:
        if not self._pending:
            return
        sums = strategy.reduce(torch.stack([s for _, s in self._pending]), reduce_op="sum")
        chain = rows[-1]["chain"] if rows else ""
        for (step, _), value in zip(self._pending, sums.tolist(), strict=True):
            digest = f"{value % 2**64:016x}"
            chain = hashlib.sha256(f"{chain}{digest}".encode()).hexdigest()[:16]
            rows.append({"step": step, "digest": digest, "chain": chain})
        self._pending.clear()


def digest_metric(chain: str) -> float:
    """The MLflow value of a chained digest: its first 12 hex digits (48 bits, exact in float64)."""
    return float(int(chain[:12], 16))
