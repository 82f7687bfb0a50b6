"""The LightningModule: next-token cross-entropy plus the router losses, AdamW, warmup-stable-decay.

One optimizer step, in the order Lightning runs it (``accumulate_grad_batches = grad_accum``
micro-batches, then one update), and who does what:

 1. ``SamplerProgress.on_train_batch_start`` marks the micro-batch as consumed (the sampler
    position a checkpoint records); with ``balance: global`` and accumulation, at the step's
    first micro-batch, :meth:`MoELanguageModel.on_train_batch_start` routes all of the step's
    micro-batches once without gradients (:mod:`pipeline.train.step_routing`);
 2. :meth:`MoELanguageModel.training_step`: forward, ``loss = cross_entropy + aux_loss``; the
    detached parts go into :attr:`MoELanguageModel.last_micro_batch` (a :class:`MicroBatch`);
 3. ``NonFiniteLossGuard.on_before_backward`` stops the run on a NaN/inf loss, before any
    gradient exists;
 4. backward (Lightning scales the loss by ``1 / grad_accum``);
 5. :meth:`on_after_backward`: on the step's last micro-batch under ``model_parallel``, the
    gradient reductions FSDP2 does not own (:mod:`pipeline.parallel.setup`);
 6. ``TrainMonitor.on_train_batch_end`` keeps the micro-batch's losses (and, at logging steps,
    its router statistics) on the device; steps 1-6 repeat for each micro-batch;
 7. ``TrainMonitor.on_before_optimizer_step`` reads the learning rate and, at logging steps,
    the norm of the whole gradient (before clipping);
 8. :meth:`configure_gradient_clipping` clips by that global norm;
 9. :meth:`optimizer_step`: AdamW, then the aux-loss-free router biases move by the step's
    expert counts, which the MoE layers then clear (once per step); the LR scheduler steps
    (``interval: step``);
10. ``TrainMonitor.on_train_batch_end`` (after the step) records the step's mean losses and, at
    logging steps, reduces them over ranks in one collective and logs;
11. at validation steps, :meth:`validation_step` over the validation windows; then
    ``LastCheckpoint`` (every ``checkpoint_every`` steps, after validation when both fall on
    the step) and Lightning's ``ModelCheckpoint`` (``best.ckpt`` by validation loss).

Loss granularity. Lightning divides each micro-batch's loss by ``accumulate_grad_batches`` and
DDP averages gradients over ranks, so the optimised quantity is the mean, over the micro-batches
of one optimizer step, of ``cross_entropy + aux_loss``. Every window has ``seq_len`` targets (no
padding), so the mean of the micro-batch cross-entropies is exactly the global-batch token mean,
whatever the accumulation or world size. ``aux_loss`` comes from the model already a mean per
micro-batch and is not rescaled, so its weight means the same under any accumulation or world
size. The z-loss and the sequence-level balance loss are means over tokens and sequences, hence
exactly invariant too; the Switch balance loss (``balance: micro``) is a product of two batch
means computed per micro-batch (as in Switch and Megatron): its value stays put, but its router
gradient follows each micro-batch's own expert fractions, while ``balance: global`` takes the
whole step's fractions (the routing pre-pass) and is exactly invariant
(``pipeline/model/losses.py``; measured in ``tests/train/test_invariance.py``).

Parallel layouts (``train.runtime.parallel``, :mod:`pipeline.parallel`): ``configure_model``
shards the experts and applies FSDP2 / activation checkpointing on the strategy's device mesh;
this module reduces the gradients FSDP2 does not own (all without FSDP2, the expert blocks with
it) once per optimizer step, and clips by the norm of the whole (sharded) gradient. The router
statistics of any multi-process run are aggregated over the world, so the Switch loss and the
logged load are those of the global micro-batch whatever the layout.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from pipeline.config import NOT_THE_RUN, InitConfig, TrainConfig
from pipeline.model import MoETransformer, RouterStats
from pipeline.model_io import model_identity
from pipeline.parallel.setup import all_reduce_gradients, clip_grad_norm, parallelize
from pipeline.train.checkpoint_io import (
    CHECKPOINT_KEY,
    CheckpointMismatchError,
    check_same_model,
    config_differences,
)
from pipeline.train.optim import build_optimizer
from pipeline.train.step_routing import count_step_routing

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MicroBatch:
    """What one training micro-batch leaves for the callbacks (all detached, on the device):
    the cross-entropy, the weighted router losses, and each MoE layer's router statistics."""

    cross_entropy: torch.Tensor
    aux_loss: torch.Tensor
    router_stats: list[RouterStats]


class MoELanguageModel(L.LightningModule):
    """Wraps :class:`MoETransformer` for training; the transformer itself stays Lightning-free."""

    def __init__(self, cfg: TrainConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.model = MoETransformer(cfg.model, vocab_size, backend=cfg.runtime.backend)
        if cfg.runtime.compile:
            self.model.compile()  # in place: state_dict keys stay free of "_orig_mod."
        self._val_sum = self._val_count = torch.zeros(())  # reset per validation, on the device
        self.val_loss: float | None = None
        self.last_micro_batch: MicroBatch | None = None
        self._parallelized = False
        self._ends_step = True  # whether the current micro-batch is its step's last
        self._routed_step = -1  # the optimizer step whose routing the pre-pass counted

    def configure_model(self) -> None:
        """Lightning calls this once per fit/validate, after the processes exist and before the
        optimizer is built; the layout is applied once."""
        if not self._parallelized:
            parallelize(self.model, self.cfg.runtime.parallel, self.device_mesh)
            self._parallelized = True

    def on_after_backward(self) -> None:
        """Model-parallel strategy: nobody else averages the gradients FSDP2 does not own."""
        if self.device_mesh is not None and self._ends_step:
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

    def on_train_batch_start(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        """Global balance under accumulation: at the step's first micro-batch, the routing
        pre-pass counts the whole step's assignments (:mod:`pipeline.train.step_routing`)."""
        step = self.trainer.global_step
        global_balance = self.cfg.model.moe.balance == "global"
        if (
            global_balance
            and self.trainer.accumulate_grad_batches > 1
            and step != self._routed_step
        ):
            self._routed_step = step
            count_step_routing(self, batch[0])

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int):
        inputs_BL, targets_BL = batch
        self._ends_step = (batch_idx + 1) % self.trainer.accumulate_grad_batches == 0
        out = self.model(inputs_BL, targets_BL)
        ce = out.cross_entropy
        self.last_micro_batch = MicroBatch(ce.detach(), out.aux_loss.detach(), out.router_stats)
        return ce + out.aux_loss

    def optimizer_step(self, *args, **kwargs) -> None:
        """Step, then move the aux-loss-free balancing biases: once per optimizer step, after
        the weights they steer have changed, never per micro-batch."""
        super().optimizer_step(*args, **kwargs)
        self.model.update_router_biases()

    def on_validation_epoch_start(self) -> None:
        self._val_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        self._val_count = torch.zeros((), device=self.device, dtype=torch.float64)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        inputs_BL, targets_BL = batch
        logits_BLV = self.model(inputs_BL).logits
        self._val_sum += token_cross_entropy(logits_BLV, targets_BL, reduction="sum").double()
        self._val_count += targets_BL.numel()

    def on_validation_epoch_end(self) -> None:
        """Token-weighted mean over all ranks: exact whatever the split of windows over ranks."""
        total = self.trainer.strategy.reduce(
            torch.stack([self._val_sum, self._val_count]), reduce_op="sum"
        )
        self.val_loss = (total[0] / total[1]).item()
        # For ModelCheckpoint(monitor=...) and the progress bar; the logger gets it from TrainMonitor.
        self.log("val/loss", self.val_loss, prog_bar=True, logger=False)

    def configure_optimizers(self) -> dict:
        mixed = self.trainer.precision.endswith("-mixed")
        optimizer, scheduler = build_optimizer(
            self.model, self.cfg.optim, self.cfg.max_steps, mixed_precision=mixed
        )
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
        if any(key.endswith(".w1") for key in checkpoint.get("state_dict", {})):
            # The weights would convert (GroupedExperts' load hook), AdamW's moments would not:
            # they are per parameter, and w1 + w3 are one parameter now.
            raise CheckpointMismatchError(
                f"{source} holds the experts' gate and up weights apart (w1, w3), the layout "
                "before they were stacked into w13; its optimizer state cannot resume this "
                "run. Start afresh with train.runtime.resume: never, or delete that directory"
            )
        current = self.cfg.model_dump(mode="json")
        # A checkpoint from before train.init existed started from scratch, the default.
        saved_train = {"init": InitConfig().model_dump(mode="json"), **saved["train"]}
        how = config_differences(_only(saved_train, NOT_THE_RUN), _only(current, NOT_THE_RUN))
        if how:
            log.info("resuming under other runtime settings:\n  %s", "\n  ".join(how))
        what = config_differences(_without(saved_train), _without(current))
        if what:
            log.warning(
                "resuming with train params that differ from the checkpoint's; the run is no "
                "longer the one that was interrupted:\n  %s",
                "\n  ".join(what),
            )


def _only(train: dict[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in train.items() if k in sections}


def _without(train: dict[str, Any]) -> dict[str, Any]:
    """What the run trains, less the model (checked on its own, as the identity)."""
    return {k: v for k, v in train.items() if k not in ("model", *NOT_THE_RUN)}


def token_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over all (B, L) positions, in fp32 even when the logits are bf16."""
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)
