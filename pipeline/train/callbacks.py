"""Callbacks: sampler progress, the periodic ``last.ckpt``, and the metrics monitor.

Everything here is decided by optimizer step (``trainer.global_step``), never by micro-batch,
so the schedule is the same under any gradient accumulation. Collective operations (the metric
reductions) happen on every rank at the same steps, so DDP ranks never wait on each other.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint, TQDMProgressBar
from lightning.pytorch.loggers import MLFlowLogger
from torch.distributed.tensor import DTensor

from pipeline.config import TrainConfig
from pipeline.errors import PipelineError
from pipeline.model import RouterStats
from pipeline.model.backends import recorded_check, resolve_backend
from pipeline.model.routing_stats import load_summary
from pipeline.parallel.setup import grad_norm
from pipeline.train.checkpoint_io import AtomicCheckpointIO
from pipeline.train.metrics import mfu, peak_flops, slow_cpu_bf16
from pipeline.train.routing_health import (
    DIGEST_METRIC,
    RoutingDigest,
    RoutingGuard,
    RoutingHealth,
    digest_metric,
)

log = logging.getLogger(__name__)

BACKEND_CHECK_TAG = "moe.backend_check"  # MLflow tag of the train run: backend_check_line()


@dataclass(frozen=True)
class StepSchedule:
    """Which optimizer steps log, validate and checkpoint; the last step does all three."""

    log_every: int
    val_every: int
    checkpoint_every: int
    max_steps: int

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> StepSchedule:
        return cls(
            cfg.monitor.log_every,
            cfg.monitor.val_every,
            cfg.runtime.checkpoint_every,
            cfg.max_steps,
        )

    def is_log(self, step: int) -> bool:
        return step % self.log_every == 0 or step == self.max_steps

    def is_val(self, step: int) -> bool:
        """Validation steps as Lightning runs them (``val_check_interval`` in micro-batches)."""
        return step % self.val_every == 0

    def is_checkpoint(self, step: int) -> bool:
        return step % self.checkpoint_every == 0 or step == self.max_steps


def router_scalars(stats: RouterStats) -> dict[str, torch.Tensor]:
    """One MoE layer's scalar statistics (dropped fraction, entropy, each unweighted loss)."""
    scalars = {"dropped_fraction": stats.dropped_fraction, "entropy": stats.entropy}
    scalars.update({f"loss_{name}": value for name, value in sorted(stats.losses.items())})
    return scalars


def router_vector(stats: RouterStats) -> torch.Tensor:
    """The scalars then the expert loads, as one float vector: one collective reduces them all."""
    values = [v.detach().float().reshape(1) for v in router_scalars(stats).values()]
    return torch.cat([*values, stats.load.detach().float()])


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype the MoE experts run in under Lightning ``precision``."""
    return torch.bfloat16 if precision.startswith("bf16") else torch.float32


def moe_backend(pl_module) -> str:
    """The MoE backend the run resolves to on its device (``auto`` names what it picked).
    Resolving runs the triton self-check where it applies (:mod:`pipeline.model.backends`),
    eagerly, before any compiled forward."""
    if not pl_module.model.moe_layers():
        return "none (no MoE layer)"
    requested = pl_module.cfg.runtime.backend
    dtype = compute_dtype(pl_module.cfg.runtime.precision)
    resolved = resolve_backend(requested, pl_module.device, dtype)
    return resolved if requested == resolved else f"{resolved} (requested {requested})"


def backend_check_line(pl_module) -> str:
    """The triton self-check's outcome for this run, in one line (the MLflow tag
    ``moe.backend_check`` and ``moe_backend_check`` in the train metrics): ``passed: ...``,
    ``failed: ...``, or ``not run: ...`` where no check applies."""
    dtype = compute_dtype(pl_module.cfg.runtime.precision)
    check = recorded_check(pl_module.device, dtype)
    if check is not None:
        return check.summary()
    return f"not run: MoE backend {moe_backend(pl_module)} on {pl_module.device.type}"


def describe_run(trainer: L.Trainer, pl_module, backend: str) -> str:
    """One line saying what actually runs (``backend``: :func:`moe_backend`'s): no silent
    fallback goes unnoticed."""
    strategy = trainer.strategy
    collectives = getattr(strategy, "process_group_backend", None)  # gloo / nccl, if any
    return (
        f"training on {pl_module.device} ({type(trainer.accelerator).__name__}): "
        f"{trainer.num_devices} device(s) x {trainer.num_nodes} node(s), "
        f"strategy {type(strategy).__name__}{f' ({collectives})' if collectives else ''}, "
        f"precision {trainer.precision}, compile {pl_module.cfg.runtime.compile}, "
        f"MoE backend {backend}, {torch.get_num_threads()} CPU threads"
    )


class StepProgressBar(TQDMProgressBar):
    """TQDM bar over the whole run in micro-batches (the stream is endless, so Lightning's own
    total would be unknown), with loss and tokens/s in the postfix and no logger version."""

    @property
    def total_train_batches(self) -> int:
        return self.trainer.max_steps * self.trainer.accumulate_grad_batches

    def on_train_epoch_start(self, trainer: L.Trainer, *args) -> None:
        super().on_train_epoch_start(trainer, *args)
        self.train_progress_bar.set_description("train")

    def get_metrics(self, trainer: L.Trainer, pl_module) -> dict:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


class SamplerProgress(Callback):
    """Advances the sampler by each micro-batch the trainer takes. Counting here, rather than in
    the sampler as it yields, keeps batches the data loader prefetched out of the checkpoint."""

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        trainer.datamodule.sampler.mark_consumed()


class NonFiniteLossError(PipelineError):
    """The training loss became NaN or infinite."""


class NonFiniteGradientError(NonFiniteLossError):
    """The gradient became NaN or infinite while the loss stayed finite (an overflow in the
    backward, typically bf16), and ``train.runtime.nonfinite_grad`` is ``stop``."""


class NonFiniteLossGuard(Callback):
    """Checks each optimizer step, before the weights change, that every micro-batch's loss and
    the gradient are finite.

    - A NaN/inf loss stops the run (:class:`NonFiniteLossError`).
    - A non-finite gradient norm with finite losses (an overflow in the backward) stops it too
      (:class:`NonFiniteGradientError`), or with ``train.runtime.nonfinite_grad: skip`` the
      step is skipped: every gradient is dropped, so AdamW changes neither the weights nor its
      moments (the learning-rate schedule and the step count still advance).

    Either way no optimizer step ever sees the bad values, and nothing is checkpointed after a
    stop, so ``last.ckpt`` on disk stays the last good state. The losses stay on the device
    until the step's end: one host sync per optimizer step, not per micro-batch. The decision
    is reduced over the ranks (any rank's bad value counts for all of them), so no rank is left
    waiting in a collective that the others never reach.
    """

    def __init__(self, last_checkpoint: Path):
        self.last_checkpoint = Path(last_checkpoint)
        self._losses: list[torch.Tensor] = []  # this step's micro-batch losses, on the device

    def on_before_backward(self, trainer: L.Trainer, pl_module, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach().float())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        losses = (
            torch.stack(self._losses) if self._losses else torch.zeros(1, device=pl_module.device)
        )
        self._losses.clear()
        flags = torch.stack([~torch.isfinite(losses).all(), ~_gradient_is_finite(pl_module)])
        if trainer.world_size > 1:
            flags = trainer.strategy.reduce(flags.float(), reduce_op="sum")
        bad_loss, bad_grad = (flags > 0).tolist()  # the step's one host sync
        step = trainer.global_step + 1
        if bad_loss:
            local = losses[~torch.isfinite(losses)]
            value = local[0].item() if local.numel() else "not finite on another rank"
            raise NonFiniteLossError(
                f"train: the loss is {value} at step {step} (not finite); training stopped "
                f"before updating the weights; {self._kept()}. Lower train.optim.lr, raise "
                "train.optim.warmup_steps, or check the data around this step"
            )
        if not bad_grad:
            return
        if pl_module.cfg.runtime.nonfinite_grad == "skip":
            optimizer.zero_grad(
                set_to_none=True
            )  # AdamW leaves parameters without a gradient alone
            if trainer.is_global_zero:
                log.warning(
                    "train: the gradient is not finite at step %d (the loss is); the step is "
                    "skipped (train.runtime.nonfinite_grad: skip)",
                    step,
                )
            return
        raise NonFiniteGradientError(
            f"train: the gradient norm is not finite at step {step} while the loss is "
            f"({losses.mean().item():.4g}): an overflow in the backward; training stopped before "
            f"updating the weights; {self._kept()}. Set train.runtime.nonfinite_grad: skip to "
            "skip such steps, lower train.optim.lr, or train with precision 32-true"
        )

    def _kept(self) -> str:
        if not self.last_checkpoint.exists():
            return "no checkpoint had been written yet"
        return (
            f"the last good checkpoint is {self.last_checkpoint} "
            f"({_checkpoint_step(self.last_checkpoint)})"
        )


def _gradient_is_finite(pl_module) -> torch.Tensor:
    """0-dim bool on the device: whether this rank's gradient (its shards, under FSDP2) has a
    finite norm. One fused norm per tensor, no copy of the gradients; a norm of finite values
    that overflows fp32 (entries past ~1e19) counts as not finite too, which it is for clipping."""
    grads = [
        g.to_local() if isinstance(g, DTensor) else g
        for g in (p.grad for p in pl_module.parameters())
        if g is not None
    ]
    if not grads:
        return torch.ones((), dtype=torch.bool, device=pl_module.device)
    return torch.isfinite(torch.stack([n.float() for n in torch._foreach_norm(grads)])).all()


def _checkpoint_step(path: Path) -> str:
    """``step N`` of a single-file checkpoint, read and verified the way a resume reads it."""
    if path.is_dir():
        return "a distributed checkpoint directory"
    try:
        return f"step {AtomicCheckpointIO().load_checkpoint(path)['global_step']}"
    except Exception as exc:  # an error report must not fail on the checkpoint it reports
        return f"unreadable: {exc}"


class LastCheckpoint(Checkpoint):
    """``last.ckpt`` every ``checkpoint_every`` optimizer steps and at the last one.

    At a validation step it is written after validation, so the resumed run neither repeats nor
    misses that validation and the best-checkpoint tracking includes it.
    """

    def __init__(self, path: Path, schedule: StepSchedule):
        self.path = Path(path)
        self.schedule = schedule
        self._saved_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._saved_step = trainer.global_step  # resuming: that step is on disk already

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int
    ) -> None:
        if not self.schedule.is_val(trainer.global_step):
            self._maybe_save(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._maybe_save(trainer)

    def _maybe_save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        if step != self._saved_step and self.schedule.is_checkpoint(step):
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_step = step


class TrainMonitor(Callback):
    """Per-step loss history, periodic metrics to the logger, router statistics, routing health
    and its guard, the routing digest, throughput.

    Per-micro-batch values stay on the device until a step that logs, validates or checkpoints;
    then they are reduced over ranks in one collective and moved to the host, so the loop does not
    synchronise with the device every step. The history (every step's loss, learning rate and
    routing digest, validation losses, expert loads, routing health) and the throughput totals
    are saved in checkpoints, so a resumed run's plots and final metrics cover the whole run.
    Routing health, guard and digest: :mod:`pipeline.train.routing_health`.
    """

    def __init__(self, cfg: TrainConfig, flops_per_token: float, peak_flops: float | None = None):
        self.cfg = cfg
        self.schedule = StepSchedule.from_config(cfg)
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops  # per device
        self.peak_source = "params" if peak_flops else "measured"
        self.backend_check = "not run: training did not start"
        self.history: dict[str, list[dict[str, Any]]] = {
            "train": [], "val": [], "load": [], "routing": [], "routing_digest": []
        }  # fmt: skip
        self.health = RoutingHealth(cfg.monitor.dead_expert_load)
        self.guard = RoutingGuard(cfg.routing_guard)
        self.digest = RoutingDigest(cfg.micro_batch_size, cfg.seq_len)
        self._rank = 0
        self._micro: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ce, aux) of this step
        self._router: list[list[torch.Tensor]] = []  # per micro-batch: one vector per MoE layer
        self._scalar_names: list[str] = []
        self._pending: list[tuple[int, torch.Tensor, float]] = []  # (step, [ce, aux], lr)
        self._step_seen = 0
        self._lr = math.nan
        self._grad_norm: float | None = None
        self._tokens_per_step = 0
        self._world_size = 1
        self._interval = (0.0, 0)  # (time, step) when the current logging interval began
        self._val_seconds = 0.0  # validation time inside the current interval
        self._val_started = 0.0
        self._train_seconds = 0.0
        self._train_tokens = 0
        self.last_tokens_per_s = math.nan

    # ------------------------------------------------------------------ lifecycle
    def on_fit_start(self, trainer: L.Trainer, pl_module) -> None:
        self._world_size, self._rank = trainer.world_size, trainer.global_rank
        self._tokens_per_step = (
            self.cfg.seq_len * self.cfg.micro_batch_size * self.cfg.grad_accum * trainer.world_size
        )
        precision = self.cfg.runtime.precision
        bf16 = precision.startswith("bf16")
        if self.peak_flops is None:
            self.peak_flops, self.peak_source = peak_flops(
                pl_module.device, compute_dtype(precision)
            )
        # Every rank resolves its backend now, eagerly: the triton self-check runs here, not
        # inside a compiled first step, and an explicit triton that fails stops before training.
        backend = moe_backend(pl_module)
        self.backend_check = backend_check_line(pl_module)
        slow = slow_cpu_bf16(pl_module.device) if bf16 else None
        if slow and trainer.is_global_zero:
            log.warning(
                "train.runtime.precision = %s, but this CPU multiplies bf16 at %.3g FLOP/s "
                "against %.3g in fp32 (no native bf16): precision 32-true will train faster",
                precision,
                *slow,
            )
        if trainer.is_global_zero:
            log.info("%s", describe_run(trainer, pl_module, backend))
            log.info(
                "MFU against a peak of %.3g FLOP/s per device (%s)",
                self.peak_flops,
                self.peak_source,
            )
            if isinstance(trainer.logger, MLFlowLogger):
                trainer.logger.experiment.set_tag(
                    trainer.logger.run_id, BACKEND_CHECK_TAG, self.backend_check
                )

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        self._step_seen = trainer.global_step
        self._interval = (time.perf_counter(), trainer.global_step)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history,
            "train_seconds": self._train_seconds,
            "train_tokens": self._train_tokens,
            "health_window": self.health.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = state_dict["history"]
        self._train_seconds = state_dict["train_seconds"]
        self._train_tokens = state_dict["train_tokens"]
        self.health.load_state_dict(state_dict["health_window"])

    # ------------------------------------------------------------------ training steps
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module, optimizer) -> None:
        """Runs before gradient clipping, so the norm logged is the raw one: the norm of the
        whole gradient, however the layout shards it (a collective, on every rank)."""
        step = trainer.global_step + 1
        self._lr = optimizer.param_groups[0]["lr"]
        if self.schedule.is_log(step):
            self._grad_norm = grad_norm(pl_module).item()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int
    ) -> None:
        micro = pl_module.last_micro_batch
        self._micro.append((micro.cross_entropy, micro.aux_loss))
        stats = micro.router_stats
        if stats:
            self.health.add_micro_batch(stats)
            self.digest.add_micro_batch(stats, self._rank, self._world_size)
        if self.schedule.is_log(self._step_seen + 1):
            self._scalar_names = list(router_scalars(stats[0])) if stats else []
            self._router.append([router_vector(layer) for layer in stats])
        if trainer.global_step == self._step_seen:
            return  # still accumulating gradients
        step = self._step_seen = trainer.global_step
        self.health.end_step()
        self.digest.end_step(step)
        ce_aux = torch.stack([torch.stack(pair) for pair in self._micro]).mean(0)
        self._pending.append((step, ce_aux, self._lr))
        self._micro.clear()
        if (
            self.schedule.is_log(step)
            or self.schedule.is_val(step)
            or self.schedule.is_checkpoint(step)
        ):
            self._record(trainer)
        if self.schedule.is_log(step):
            self._log_step(trainer, pl_module, step)

    def _record(self, trainer: L.Trainer) -> None:
        """Reduce the pending steps' losses over ranks and append them to the history."""
        values = trainer.strategy.reduce(
            torch.stack([v for _, v, _ in self._pending]), reduce_op="mean"
        )
        for (step, _, lr), (ce, aux) in zip(self._pending, values.tolist(), strict=True):
            self.history["train"].append({"step": step, "loss": ce, "aux_loss": aux, "lr": lr})
        self._pending.clear()
        self.digest.record(trainer.strategy, self.history["routing_digest"])

    def _log_step(self, trainer: L.Trainer, pl_module, step: int) -> None:
        now = time.perf_counter()
        start, start_step = self._interval
        seconds = now - start - self._val_seconds
        tokens = (step - start_step) * self._tokens_per_step
        self._train_seconds += seconds
        self._train_tokens += tokens
        self.last_tokens_per_s = tokens / seconds
        self._interval, self._val_seconds = (now, step), 0.0

        last = self.history["train"][-1]
        metrics = {
            "train/loss": last["loss"],
            "train/ppl": math.exp(min(last["loss"], 50.0)),
            "train/aux_loss": last["aux_loss"],
            "train/lr": last["lr"],
            "perf/tokens_per_s": self.last_tokens_per_s,
            "perf/mfu": mfu(
                self.flops_per_token, self.last_tokens_per_s, self.peak_flops * self._world_size
            ),
        }
        if self._grad_norm is not None:
            metrics["train/grad_norm"] = self._grad_norm
        metrics.update(self._router_metrics(trainer, step))
        metrics.update(self._routing_health(pl_module, step, metrics))
        if trainer.logger is not None:
            trainer.logger.log_metrics(metrics, step=step)
        pl_module.log("tok/s", self.last_tokens_per_s, prog_bar=True, logger=False)
        pl_module.log("loss", last["loss"], prog_bar=True, logger=False)
        # After logging, so a stopped run's last numbers are in MLflow; on every rank alike.
        self.guard.check(self.history["routing"], step)

    def _router_metrics(self, trainer: L.Trainer, step: int) -> dict[str, float]:
        """Per MoE layer, averaged over the step's micro-batches and over ranks."""
        if not self._router or not self._router[0]:
            self._router.clear()
            return {}
        per_layer = [torch.stack(layer).mean(0) for layer in zip(*self._router, strict=True)]
        sizes = [v.numel() for v in per_layer]
        flat = trainer.strategy.reduce(torch.cat(per_layer).double(), reduce_op="mean")
        self._router.clear()
        metrics: dict[str, float] = {}
        for layer, vector in enumerate(flat.split(sizes)):
            metrics.update(self._layer_metrics(layer, vector, step))
        return metrics

    def _layer_metrics(self, layer: int, vector: torch.Tensor, step: int) -> dict[str, float]:
        names = self._scalar_names
        load = vector[len(names) :]
        prefix = f"router/layer{layer}"
        metrics = {
            f"{prefix}/{name}": value for name, value in zip(names, vector.tolist(), strict=False)
        }
        metrics.update({f"{prefix}/{k}": v for k, v in load_summary(load).items()})
        for expert, fraction in enumerate(load.tolist()):
            metrics[f"{prefix}/load/e{expert}"] = fraction
            self.history["load"].append(
                {"step": step, "layer": layer, "expert": expert, "load": fraction}
            )
        return metrics

    def _routing_health(self, pl_module, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Each MoE layer's health into the history, and the chained routing digest."""
        layers = pl_module.model.moe_layers()
        if not layers:
            return {}
        health: dict[str, float] = {}
        for layer, row in enumerate(self.health.measure(layers)):
            prefix = f"router/layer{layer}"
            health.update({f"{prefix}/{name}": value for name, value in row.items()})
            step_stats = {n: metrics[f"{prefix}/{n}"] for n in ("entropy", "dropped_fraction")}
            self.history["routing"].append({"step": step, "layer": layer, **step_stats, **row})
        health[DIGEST_METRIC] = digest_metric(self.history["routing_digest"][-1]["chain"])
        return health

    # ------------------------------------------------------------------ validation
    def on_validation_start(self, trainer: L.Trainer, pl_module) -> None:
        self._val_started = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module) -> None:
        self._val_seconds += time.perf_counter() - self._val_started
        if trainer.sanity_checking or pl_module.val_loss is None:
            return
        step = trainer.global_step
        val_loss = pl_module.val_loss
        self.history["val"].append({"step": step, "val_loss": val_loss})
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"val/loss": val_loss, "val/ppl": math.exp(min(val_loss, 50.0))}, step=step
            )

    # ------------------------------------------------------------------ results
    def summary(self) -> dict[str, float]:
        """Final numbers for ``metrics/train.json``."""
        recent = [row["loss"] for row in self.history["train"][-self.cfg.monitor.log_every :]]
        val = self.history["val"][-1]["val_loss"] if self.history["val"] else math.nan
        tokens_per_s = self._train_tokens / self._train_seconds if self._train_seconds else math.nan
        return {
            "train_loss": sum(recent) / len(recent) if recent else math.nan,
            "val_loss": val,
            "val_perplexity": math.exp(val),
            "tokens_per_s": tokens_per_s,
            "mfu": mfu(self.flops_per_token, tokens_per_s, self.peak_flops * self._world_size),
            "peak_flops_per_device": self.peak_flops,
            "peak_flops_source": self.peak_source,
            "moe_backend_check": self.backend_check,
            **self._final_routing(),
        }

    def _final_routing(self) -> dict[str, Any]:
        """The last logging step's health per layer (``routing_health/layer<i>/<name>``, flat
        like every train metric) and the final chained routing digest."""
        rows, digests = self.history["routing"], self.history["routing_digest"]
        if not rows:
            return {}
        last = rows[-1]["step"]
        health = {
            f"routing_health/layer{r['layer']}/{name}": value
            for r in rows
            if r["step"] == last
            for name, value in r.items()
            if name not in ("step", "layer")
        }
        return {"routing_health/step": last, **health, "routing_digest": digests[-1]["chain"]}
