"""Build the Lightning Trainer from params and run one training: fit, validate, export.

Parallelism is Lightning's own (``train.runtime``): ``devices`` x ``num_nodes`` processes under ``strategy: ddp``
or ``model_parallel`` (a data-parallel x expert-parallel device mesh, optional FSDP2:
:mod:`pipeline.parallel`), NCCL on GPUs, gloo on CPUs, launched by Lightning itself, by
``torchrun`` or by SLURM. The launcher re-executes the entry point in each extra process, so
everything here runs on every rank; only global rank zero writes files. Under
``model_parallel`` checkpoints are DCP directories (``last.ckpt/``), and the exported weights
are gathered from all ranks into one ordinary model first.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger
from lightning.pytorch.strategies import DDPStrategy, Strategy

from pipeline.config import ConfigError, Params, RuntimeConfig, TrainConfig
from pipeline.model_io import save_model
from pipeline.parallel.dcp import existing_checkpoint, full_model
from pipeline.parallel.strategy import MeshStrategy
from pipeline.paths import Paths
from pipeline.train.callbacks import (
    LastCheckpoint,
    NonFiniteLossGuard,
    SamplerProgress,
    StepProgressBar,
    StepSchedule,
    TrainMonitor,
)
from pipeline.train.checkpoint_io import AtomicCheckpointIO
from pipeline.train.data import TokenDataModule, training_vocab_size
from pipeline.train.module import MoELanguageModel
from pipeline.train.snapshots import WeightSnapshots
from pipeline.train.upcycle import upcycle

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    metrics: dict[str, Any]
    history: dict[str, list[dict]]
    is_global_zero: bool


def is_rank_zero_process() -> bool:
    """Whether this process is global rank zero, judged from the launcher's environment before
    any process group exists (torchrun sets RANK, SLURM SLURM_PROCID, Lightning's own launcher
    NODE_RANK/LOCAL_RANK in the processes it starts)."""
    for key in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if key in os.environ:
            return int(os.environ[key]) == 0
    return int(os.environ.get("NODE_RANK", 0)) == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


def build_strategy(cfg: TrainConfig) -> Strategy | str:
    if cfg.runtime.strategy == "ddp":
        # Lightning picks the backend: NCCL for CUDA, gloo for CPU processes.
        return DDPStrategy()
    if cfg.runtime.strategy == "model_parallel":
        return MeshStrategy(cfg)
    return "auto"


def check_precision(cfg: RuntimeConfig) -> None:
    """Refuse bf16 on a GPU without it (pre-Ampere). On a CPU bf16 always runs, emulated where
    not native: TrainMonitor warns when it is slower than fp32. fp16 is not offered at all: on a
    CPU it is orders of magnitude slower, and on a GPU it needs loss scaling for no gain here."""
    on_gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if cfg.precision.startswith("bf16") and on_gpu and not torch.cuda.is_bf16_supported():
        raise ConfigError(
            f"train.runtime.precision = {cfg.precision!r}, but this GPU has no bfloat16 "
            "support; use '32-true'"
        )


def build_trainer(
    cfg: TrainConfig,
    checkpoint_dir: Path,
    callbacks: list,
    logger: Logger | None,
    progress_bar: bool,
) -> L.Trainer:
    run = cfg.runtime
    check_precision(run)
    return L.Trainer(
        accelerator=run.accelerator,
        devices=run.devices,
        num_nodes=run.num_nodes,
        strategy=build_strategy(cfg),
        precision=run.precision,
        max_steps=cfg.max_steps,
        max_epochs=-1,  # the data stream is endless: max_steps alone ends training
        accumulate_grad_batches=cfg.grad_accum,
        gradient_clip_val=cfg.optim.grad_clip or None,
        gradient_clip_algorithm="norm",
        val_check_interval=cfg.monitor.val_every * cfg.grad_accum,  # counted in micro-batches
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.monitor.log_every,
        logger=logger or False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # WindowStream slices the global batch per rank itself
        enable_model_summary=False,
        enable_progress_bar=progress_bar,
        default_root_dir=checkpoint_dir,
    )


def resume_path(cfg: TrainConfig, last_checkpoint: Path) -> Path | None:
    """``last.ckpt`` (a file, or a DCP folder), or the previous DCP folder when a kill fell
    inside its atomic replacement (:func:`pipeline.parallel.dcp.publish`)."""
    path = existing_checkpoint(last_checkpoint) if cfg.runtime.resume == "auto" else None
    if path is not None:
        log.info("resuming from %s", path)
    return path


def train(
    params: Params,
    paths: Paths,
    run_key: str,
    logger: Logger | None = None,
    progress_bar: bool = True,
    extra_callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Fit (resuming from ``last.ckpt`` of ``run_key`` when allowed, else from the upcycled
    dense model of ``train.init`` when set, else from scratch), validate the final weights
    if the last step was not a validation step, write the model files; return metrics and
    history. The stage passes the run fingerprint as ``run_key``
    (:func:`pipeline.train.outputs.run_fingerprint`).

    ``extra_callbacks`` run after the monitor and before the checkpoints (tests use them to
    interrupt a run; profilers to observe one).
    """
    cfg = params.train
    started = time.perf_counter()
    L.seed_everything(params.seed, workers=True)  # before the model: its init is seeded
    train_tokens, val_tokens = paths.token_split("train"), paths.token_split("validation")
    vocab_size = training_vocab_size(train_tokens, val_tokens)
    module = MoELanguageModel(cfg, vocab_size)
    counts = module.model.num_params()  # before configure_model shards anything
    data = TokenDataModule(train_tokens, val_tokens, cfg, params.seed)
    schedule = StepSchedule.from_config(cfg)
    monitor = TrainMonitor(cfg, module.model.flops_per_token(cfg.seq_len), cfg.monitor.peak_flops)
    checkpoint_dir, last_checkpoint = paths.checkpoint_dir(run_key), paths.last_checkpoint(run_key)
    checkpoint = resume_path(cfg, last_checkpoint)
    if checkpoint is None and cfg.init.upcycle_from is not None:  # a resumed run has its weights
        upcycle(module.model, cfg.init, params.seed)
    best = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor="val/loss",
        mode="min",
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    last = LastCheckpoint(last_checkpoint, schedule)
    guard = NonFiniteLossGuard(last_checkpoint)
    snapshots = WeightSnapshots(cfg, paths, module.identity)
    callbacks = [SamplerProgress(), guard, monitor, snapshots, *extra_callbacks, best, last]
    if progress_bar:
        callbacks.append(StepProgressBar())
    trainer = build_trainer(cfg, checkpoint_dir, callbacks, logger, progress_bar)
    trainer.fit(module, datamodule=data, ckpt_path=checkpoint, weights_only=True)
    validated = monitor.history["val"]
    if not validated or validated[-1]["step"] != trainer.global_step:
        trainer.validate(module, datamodule=data, verbose=False)
    parallel = cfg.runtime.strategy == "model_parallel"
    export_model = full_model(module.model) if parallel else module.model
    if trainer.is_global_zero:
        save_model(export_model, module.identity, paths.model_files)
    metrics = {
        **monitor.summary(),
        "params_total": counts["total"],
        "params_active": counts["active"],
        "steps": trainer.global_step,
        "wall_time_s": time.perf_counter() - started,
    }
    return TrainResult(metrics, monitor.history, trainer.is_global_zero)
