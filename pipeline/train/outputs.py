"""Where training reads and writes, and the DVC metrics/plots files it leaves behind."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.io import write_json
from pipeline.paths import Paths
from pipeline.train.metrics import write_csv


@dataclass(frozen=True)
class TrainFiles:
    train_tokens: Path
    val_tokens: Path
    models_dir: Path
    metrics_file: Path
    plots_dir: Path

    @classmethod
    def from_paths(cls, paths: Paths) -> TrainFiles:
        return cls(
            train_tokens=paths.tokens("train"),
            val_tokens=paths.tokens("validation"),
            models_dir=paths.root / "models",
            metrics_file=paths.root / "metrics" / "train.json",
            plots_dir=paths.root / "plots" / "train",
        )

    @property
    def checkpoint_dir(self) -> Path:
        return self.models_dir / "checkpoints"

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
