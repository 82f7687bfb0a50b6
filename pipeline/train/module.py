"""The LightningModule: next-token cross-entropy plus the router losses, AdamW, warmup-stable-decay.

Loss granularity. Lightning divides each micro-batch's loss by ``accumulate_grad_batches`` and
DDP averages gradients over ranks, so the optimised quantity is the mean, over the micro-batches
of one optimizer step, of ``cross_entropy + aux_loss``. Every window has ``seq_len`` targets (no
padding), so the mean of the micro-batch cross-entropies is exactly the global-batch token mean,
whatever the accumulation or world size. ``aux_loss`` comes from the model already a mean per
micro-batch and is not rescaled, so its weight means the same under any accumulation or world
size. The z-loss and the sequence-level balance loss are means over tokens and sequences, hence
exactly invariant too; the Switch balance loss is a product of two batch means computed per
micro-batch (as in Switch and Megatron): its value stays put, but its router gradient follows
each micro-batch's own expert fractions (``pipeline/model/losses.py``; measured in
``tests/train/test_invariance.py``).

Parallel layouts (``train.parallel``, :mod:`pipeline.parallel`): ``configure_model`` shards the
experts and applies FSDP2 / activation checkpointing on the strategy's device mesh; this module
reduces the gradients FSDP2 does not own (all without FSDP2, the expert blocks with it) once
per optimizer step, and clips by the norm of the whole (sharded) gradient. The router
statistics of any multi-process run are aggregated over the world, so the Switch loss and the
logged load are those of the global micro-batch whatever the layout.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from pipeline.config import TrainConfig
from pipeline.model import MoETransformer
from pipeline.parallel.setup import all_reduce_gradients, clip_grad_norm, parallelize
from pipeline.train.checkpoint import (
    CHECKPOINT_KEY,
    CheckpointMismatchError,
    check_same_model,
    config_differences,
    model_identity,
)
from pipeline.train.optim import build_optimizer

log = logging.getLogger(__name__)


class MoELanguageModel(L.LightningModule):
    """Wraps :class:`MoETransformer` for training; the transformer itself stays Lightning-free."""

    def __init__(self, cfg: TrainConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.model = MoETransformer(cfg.model, vocab_size)
        if cfg.compile:
            self.model.compile()  # in place: state_dict keys stay free of "_orig_mod."
        self._val_sum = self._val_count = torch.zeros(())  # reset per validation, on the device
        self.val_loss: float | None = None
        self._parallelized = False
        self._last_micro_batch = True

    def configure_model(self) -> None:
        """Lightning calls this once per fit/validate, after the processes exist and before the
        optimizer is built; the layout is applied once."""
        if not self._parallelized:
            parallelize(self.model, self.cfg.parallel, self.device_mesh)
            self._parallelized = True

    def on_after_backward(self) -> None:
        """Model-parallel strategy: nobody else averages the gradients FSDP2 does not own."""
        if self.device_mesh is not None and self._last_micro_batch:
            all_reduce_gradients(self.model, self.device_mesh)

    def configure_gradient_clipping(
        self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None
    ):
        if self.device_mesh is None:
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
        elif gradient_clip_val:
            clip_grad_norm(self.model, gradient_clip_val)

    @property
    def identity(self) -> dict[str, Any]:
        return model_identity(self.cfg.model, self.vocab_size)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict:
        inputs, targets = batch  # (B, T) each
        self._last_micro_batch = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        out = self.model(inputs)
        ce = token_cross_entropy(out.logits, targets)
        return {
            "loss": ce + out.aux_loss,
            "ce": ce.detach(),
            "aux": out.aux_loss.detach(),
            "router_stats": out.router_stats,
        }

    def optimizer_step(self, *args, **kwargs) -> None:
        """Step, then move the aux-loss-free balancing biases: once per optimizer step, after
        the weights they steer have changed, never per micro-batch."""
        super().optimizer_step(*args, **kwargs)
        self.model.update_router_biases()

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs, targets = batch
        logits = self.model(inputs).logits
        self._val_sum += token_cross_entropy(logits, targets, reduction="sum").double()
        self._val_count += targets.numel()

    def on_validation_epoch_end(self) -> None:
        """Token-weighted mean over all ranks: exact whatever the split of windows over ranks."""
        total = self.trainer.strategy.reduce(
            torch.stack([self._val_sum, self._val_count]), reduce_op="sum"
        )
        self.val_loss = (total[0] / total[1]).item()
        # For ModelCheckpoint(monitor=...) and the progress bar; the logger gets it from TrainMonitor.
        self.log("val/loss", self.val_loss, prog_bar=True, logger=False)

    def configure_optimizers(self) -> dict:
        optimizer, scheduler = build_optimizer(self.model, self.cfg.optim, self.cfg.max_steps)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {
            "identity": self.identity,
            "train": self.cfg.model_dump(mode="json"),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Runs before the weights load: a checkpoint of another model fails here with the list
        of differing config keys rather than as a wall of state_dict shape errors."""
        source = str(self.trainer.ckpt_path or "the checkpoint")
        saved = checkpoint.get(CHECKPOINT_KEY)
        if saved is None:
            raise CheckpointMismatchError(f"{source} is not a moe-pipeline checkpoint")
        check_same_model(saved["identity"], self.identity, source)
        current = self.cfg.model_dump(mode="json")
        changed = config_differences(without_model(saved["train"]), without_model(current))
        if changed:
            log.warning(
                "resuming with train params that differ from the checkpoint's; the run is no "
                "longer the one that was interrupted:\n  %s",
                "\n  ".join(changed),
            )


def without_model(train: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train.items() if k != "model"}


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over all (B, T) positions, in fp32 even when the logits are bf16."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)
