"""Weight snapshots part-way through training, for evaluate's router saturation.

Router saturation (Muennighoff et al. 2024, "OLMoE", §5) compares each token's top-k experts
at an earlier point of training with the final model's, so training keeps the weights of those
points: ``train.monitor.snapshot_fractions`` names them as fractions of ``max_steps``, and after
the optimizer step nearest each (:func:`snapshot_steps`) :class:`WeightSnapshots` writes the
model with :func:`pipeline.model_io.save_model` into ``models/snapshots/<percent>pct/``
(:meth:`pipeline.paths.Paths.snapshot_files`), a DVC output of train.

- **Atomic.** A snapshot is written into a staging directory beside its target and renamed into
  place (:func:`pipeline.parallel.dcp.publish`): a killed run leaves no half-written snapshot.
- **Rank zero writes.** Under ``model_parallel`` every rank first joins the gather of the sharded
  weights into one ordinary model (a collective), as the final export does.
- **Resume.** Decisions are by optimizer step, never by time or batch count: a run resumed past
  a snapshot's step never reaches it again and leaves the file it wrote before the interruption
  alone (``dvc.yaml`` marks the directory ``persist``, so ``dvc repro`` keeps it too). A run
  resumed from a checkpoint before the step writes it again, from the same weights.
- **One run's snapshots.** A run that starts at step 0 empties the directory first, so evaluate
  never compares the final model with a snapshot of some other run.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from pipeline.config import TrainConfig
from pipeline.model_io import save_model
from pipeline.parallel.dcp import full_model, publish, remove
from pipeline.paths import ModelFiles, Paths

log = logging.getLogger(__name__)


def snapshot_steps(fractions: list[float], max_steps: int) -> dict[float, int]:
    """The optimizer step of each fraction: the nearest to ``fraction · max_steps``. Fractions
    that land on step 0 (nothing trained yet) or on the last step (the final model itself) are
    left out: they are only possible in runs of a handful of steps."""
    steps = {fraction: round(fraction * max_steps) for fraction in fractions}
    return {fraction: step for fraction, step in steps.items() if 0 < step < max_steps}


class WeightSnapshots(Callback):
    """Writes the model's weights after each snapshot step; see the module docstring."""

    def __init__(self, cfg: TrainConfig, paths: Paths, identity: dict[str, Any]):
        self.fractions = cfg.monitor.snapshot_fractions
        self.steps = snapshot_steps(self.fractions, cfg.max_steps)
        self.paths = paths
        self.identity = identity
        self.gather = cfg.runtime.strategy == "model_parallel"
        self._step_seen = 0

    def on_train_start(self, trainer: L.Trainer, pl_module) -> None:
        step = self._step_seen = trainer.global_step
        if not trainer.is_global_zero:
            return
        if step == 0:  # a new run: what the directory holds belongs to another one
            remove(self.paths.snapshots_dir)
        self.paths.snapshots_dir.mkdir(parents=True, exist_ok=True)  # a DVC output, even empty
        outside = [f for f in self.fractions if f not in self.steps]
        if outside:
            log.warning(
                "no snapshot for train.monitor.snapshot_fractions %s: they fall on step 0 or "
                "on the last of the %d steps",
                outside,
                trainer.max_steps,
            )
        lost = [f for f, s in self.steps.items() if s <= step and not self._exists(f)]
        if lost:
            log.warning(
                "no snapshot for train.monitor.snapshot_fractions %s: this run resumes at step "
                "%d, past them (train.runtime.resume: never retrains from the start)",
                lost,
                step,
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self._step_seen:
            return  # still accumulating gradients: the weights have not changed
        self._step_seen = step
        for fraction in [f for f, s in self.steps.items() if s == step]:
            self._save(trainer, pl_module, fraction)

    def _save(self, trainer: L.Trainer, pl_module, fraction: float) -> None:
        model = full_model(pl_module.model) if self.gather else pl_module.model  # every rank
        if not trainer.is_global_zero:
            return
        target = self.paths.snapshot_files(fraction).weights.parent
        staging = target.with_name(f".{target.name}.staging")
        remove(staging)  # left by a run killed while writing
        save_model(model, self.identity, ModelFiles.in_dir(staging))
        publish(staging, target)
        log.info(
            "snapshot after step %d (%g of training): %s", trainer.global_step, fraction, target
        )

    def _exists(self, fraction: float) -> bool:
        files = self.paths.snapshot_files(fraction)
        return files.weights.is_file() and files.config.is_file()
