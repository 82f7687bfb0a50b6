"""Training checkpoint files: atomic writes, safe loads, and the config checks of a resume.

Lightning's ``TorchCheckpointIO`` (2.6) serialises to memory and writes through an fsspec
transaction whose local temporary file lives in the system temp directory; committing it is a
``shutil.move``, which across filesystems is a copy that a kill can interrupt, leaving a
truncated ``last.ckpt`` under the final name. :class:`AtomicCheckpointIO` writes beside the
target, fsyncs, and ``os.replace``-s it into place, so a checkpoint file is either the old one or
the complete new one. It loads with ``weights_only=True`` always: a checkpoint holds tensors,
numbers, strings and containers only, so no pickle code ever runs.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io import TorchCheckpointIO

from pipeline.config import flatten_keys
from pipeline.errors import PipelineError
from pipeline.io import atomic_path

CHECKPOINT_KEY = "moe_pipeline"  # our section of a Lightning checkpoint


class CheckpointMismatchError(PipelineError, ValueError):
    """A checkpoint was written for another model than the params describe."""


class CheckpointCorruptError(PipelineError):
    """A checkpoint file is truncated, altered, or holds more than tensors and plain data."""


DIGEST_KEY = "moe_pipeline_sha256"  # SHA-256 of every tensor and value of the checkpoint


def checkpoint_digest(data: Any) -> str:
    """SHA-256 over a checkpoint's contents in a fixed order: tensors by dtype, shape and bytes,
    other leaves by ``repr``. Stored in the checkpoint itself, it catches what the zip container
    does not: ``torch.load`` returns a tensor with flipped bytes without complaint."""
    digest = hashlib.sha256()

    def visit(node: Any) -> None:
        if isinstance(node, torch.Tensor):
            flat = node.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{flat.dtype}{tuple(node.shape)}".encode())
            digest.update(flat.view(torch.uint8).numpy().tobytes())
        elif isinstance(node, dict):
            for key in sorted(node, key=repr):
                digest.update(repr(key).encode())
                visit(node[key])
        elif isinstance(node, list | tuple):
            digest.update(f"{type(node).__name__}{len(node)}".encode())
            for item in node:
                visit(item)
        else:
            digest.update(repr(node).encode())

    visit(data)
    return digest.hexdigest()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically beside their target, with a digest of their contents; load
    them without unpickling code and only when the digest still matches."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        sealed = {**checkpoint, DIGEST_KEY: checkpoint_digest(checkpoint)}
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            torch.save(sealed, handle)
            handle.flush()
            os.fsync(handle.fileno())

    def load_checkpoint(
        self, path, map_location=None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise ValueError(
                "refusing weights_only=False: checkpoints are loaded without unpickling"
            )
        path = Path(path)
        if path.is_dir():
            raise CheckpointMismatchError(
                f"{path} is a distributed checkpoint directory (train.strategy: model_parallel); "
                "resume it with that strategy, or convert it to single-file weights with "
                f"`python -m pipeline.train.consolidate {path} <models dir>`"
            )
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointCorruptError(
                f"{path}: refusing to load: it holds objects other than tensors and plain data "
                f"(checkpoints load with weights_only=True): {str(exc).splitlines()[0]}"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise CheckpointCorruptError(
                f"{path}: unreadable checkpoint, truncated or corrupted "
                f"({str(exc).splitlines()[0]}); delete it to start afresh"
            ) from None
        expected = checkpoint.pop(DIGEST_KEY, None)
        if expected != checkpoint_digest(checkpoint):
            problem = "has no content digest" if expected is None else "fails its content digest"
            raise CheckpointCorruptError(
                f"{path}: {problem}: the file was altered or corrupted after it was written; "
                "delete it to start afresh"
            )
        return checkpoint


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: checkpoint X, params Y`` for every dotted key whose values differ."""
    a, b = flatten_keys(saved), flatten_keys(current)
    missing = object()
    return [
        f"{key}: checkpoint {a.get(key, '<absent>')!r}, params {b.get(key, '<absent>')!r}"
        for key in sorted(a.keys() | b.keys())
        if a.get(key, missing) != b.get(key, missing)
    ]


def check_same_model(saved: dict[str, Any], current: dict[str, Any], source: str) -> None:
    differences = config_differences(saved, current)
    if differences:
        raise CheckpointMismatchError(
            f"{source} was written for a different model; differences:\n  "
            + "\n  ".join(differences)
            + "\n(delete the checkpoint or set train.runtime.resume: never to start afresh)"
        )
