"""Checkpoint files: atomic writes, safe loads, config checks on resume, and the exported weights.

Lightning's ``TorchCheckpointIO`` (2.6) serialises to memory and writes through an fsspec
transaction whose local temporary file lives in the system temp directory; committing it is a
``shutil.move``, which across filesystems is a copy that a kill can interrupt, leaving a
truncated ``last.ckpt`` under the final name. :class:`AtomicCheckpointIO` writes beside the
target, fsyncs, and ``os.replace``-s it into place, so a checkpoint file is either the old one or
the complete new one. It loads with ``weights_only=True`` always: a checkpoint holds tensors,
numbers, strings and containers only, so no pickle code ever runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO
from safetensors.torch import save_model
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.io import atomic_path, write_json

CHECKPOINT_KEY = "moe_pipeline"  # our section of a Lightning checkpoint
WEIGHTS_FORMAT = "moe-pipeline-weights/1"


class CheckpointMismatchError(PipelineError, ValueError):
    """A checkpoint was written for another model than the params describe."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically beside their target; load them without unpickling code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def load_checkpoint(
        self, path, map_location=None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(
                "refusing weights_only=False: checkpoints are loaded without unpickling"
            )
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint X, params Y`` for every dotted key whose values differ."""
    a, b = flatten(saved), flatten(current)
    missing = object()
    return [
        f"{key}: checkpoint {a.get(key, '<absent>')!r}, params {b.get(key, '<absent>')!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing)
    ]


def model_identity(cfg: ModelConfig, vocab_size: int) -> dict[str, Any]:
    """What must match for weights to load: the model config and the vocabulary size."""
    return {"model": cfg.model_dump(mode="json"), "vocab_size": vocab_size}


def check_same_model(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    differences = config_differences(saved, current)
    if differences:
        raise CheckpointMismatchError(
            f"{source} was written for a different model; differences:\n  "
            + "\n  ".join(differences)
            + "\n(delete the checkpoint or set train.resume: never to start afresh)"
        )


def export_weights(model: nn.Module, identity: dict[str, Any], weights: Path, config: Path) -> None:
    """``model.safetensors`` (load with ``safetensors.torch.load_model``: tied tensors are stored
    once) and ``model_config.json`` (model config + vocab size), both written atomically."""
    with atomic_path(weights) as tmp:
        save_model(model, str(tmp), metadata={"format": "pt", "identity": json.dumps(identity)})
    write_json(config, {"format": WEIGHTS_FORMAT, **identity})
