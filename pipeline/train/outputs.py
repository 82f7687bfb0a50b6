"""Where training reads and writes, and the DVC metrics/plots files it leaves behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.io import write_json
from pipeline.paths import Paths
from pipeline.train.metrics import write_csv


@dataclass(frozen=True)
class TrainFiles:
    """``run_key`` (see :func:`run_fingerprint`) puts the checkpoints of one training run in
    their own ``models/checkpoints/<run_key>/`` directory."""

    train_tokens: Path
    val_tokens: Path
    models_dir: Path
    metrics_file: Path
    plots_dir: Path
    run_key: str | None = None

    @classmethod
    def from_paths(cls, paths: Paths) -> TrainFiles:
        return cls(
            train_tokens=paths.tokens("train"),
            val_tokens=paths.tokens("validation"),
            models_dir=paths.root / "models",
            metrics_file=paths.root / "metrics" / "train.json",
            plots_dir=paths.root / "plots" / "train",
        )

    def for_run(self, run_key: str) -> TrainFiles:
        return replace(self, run_key=run_key)

    @property
    def checkpoint_root(self) -> Path:
        return self.models_dir / "checkpoints"

    @property
    def checkpoint_dir(self) -> Path:
        return self.checkpoint_root / self.run_key if self.run_key else self.checkpoint_root

    def remove_other_runs_checkpoints(self) -> list[Path]:
        """Delete the checkpoint directories of other runs (other params or data); returns them.

        Only the current run can resume from its checkpoints, and finished runs keep their
        results in ``model.safetensors`` and the metrics, so the others are dead weight.
        """
        if not self.run_key or not self.checkpoint_root.is_dir():
            return []
        others = [d for d in self.checkpoint_root.iterdir() if d.name != self.run_key]
        for other in others:
            shutil.rmtree(other) if other.is_dir() else other.unlink()
        return others

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoint_dir / "last.ckpt"

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoint_dir / "best.ckpt"

    @property
    def weights(self) -> Path:
        return self.models_dir / "model.safetensors"

    @property
    def model_config(self) -> Path:
        return self.models_dir / "model_config.json"

    @property
    def run_file(self) -> Path:
        return self.models_dir / "run.json"


# ``train`` keys that do not change what is trained: where it runs (devices, strategy, parallel
# layout: checkpoints reshard, so a run may resume on another layout) and how it is observed.
NOT_IN_FINGERPRINT = (
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "parallel",
    "resume",
    "log_every",
    "val_every",
    "val_batches",
    "checkpoint_every",
    "peak_flops",
)


def run_fingerprint(params: Params, train_tokens_sha256: str) -> str:
    """Identifies one training run: the seed, the ``train`` section (less
    :data:`NOT_IN_FINGERPRINT`) and the training data.

    ``dvc repro`` keeps ``models/checkpoints`` between runs (``persist: true``) so that a killed
    run resumes; keying the checkpoints by this fingerprint lets only the same run resume, while
    a variant (``dvc exp run -S train....``, new data) starts afresh instead of picking up, or
    being refused, another run's state.
    """
    train = params.train.model_dump(mode="json", exclude=set(NOT_IN_FINGERPRINT))
    identity = {"seed": params.seed, "train": train, "train_tokens": train_tokens_sha256}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"run-{digest[:12]}"


def write_outputs(
    files: TrainFiles, metrics: dict[str, Any], history: dict[str, list[dict]]
) -> None:
    """``metrics/train.json`` and the plot data: ``loss.csv`` (every step), ``val.csv`` (every
    validation) and ``load.csv`` (expert load per layer at each logging step)."""
    write_json(files.metrics_file, metrics)
    write_csv(
        files.plots_dir / "loss.csv",
        ["step", "train_loss", "aux_loss", "lr"],
        ([r["step"], r["loss"], r["aux_loss"], r["lr"]] for r in history["train"]),
    )
    write_csv(
        files.plots_dir / "val.csv",
        ["step", "val_loss"],
        ([r["step"], r["val_loss"]] for r in history["val"]),
    )
    write_csv(
        files.plots_dir / "load.csv",
        ["step", "layer", "expert", "load"],
        ([r["step"], r["layer"], r["expert"], r["load"]] for r in history["load"]),
    )
