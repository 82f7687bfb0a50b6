"""Reading and writing the trained model's files: ``model.safetensors`` + ``model_config.json``.

The train stage writes them (:func:`save_model`); export, evaluate and card read them
(:func:`load_model`, :func:`read_model_config`). ``model_config.json`` holds the model spec the
weights were trained with (``train.model``) and the vocabulary size: the model's identity. The
model is rebuilt from it, never from today's ``params.yaml``, so evaluation scores the model that
was trained even when the params have moved on since.

The runtime choice of backend is an argument of :func:`load_model`, not part of the files: the
same weights load under any backend. ``model_config.json`` also records the SHA-256 of the
weights file as written (``weights_sha256``); :func:`load_model` checks it before building
anything, so damaged weights stop export and evaluation instead of being exported or scored.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model as load_safetensors
from safetensors.torch import save_model as save_safetensors
from torch import nn

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.io import atomic_path, canonical_safetensors, read_json, sha256_file, write_json
from pipeline.model import MoETransformer
from pipeline.paths import ModelFiles

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "moe-pipeline-weights/1"


class ModelLoadError(PipelineError):
    """The trained model's files are missing, damaged or not in the format training writes."""


def model_identity(cfg: ModelConfig, vocab_size: int) -> dict[str, Any]:
    """What must match for weights to load: the model spec and the vocabulary size."""
    return {"model": cfg.model_dump(mode="json"), "vocab_size": vocab_size}


def save_model(model: nn.Module, identity: dict[str, Any], files: ModelFiles) -> None:
    """``model.safetensors`` (tied tensors stored once) and ``model_config.json`` with the
    weights' SHA-256, both written atomically; the weights carry the identity in their metadata
    too."""
    with atomic_path(files.weights) as tmp:
        save_safetensors(
            model, str(tmp), metadata={"format": "pt", "identity": json.dumps(identity)}
        )
        canonical_safetensors(tmp)
        weights_sha256 = sha256_file(tmp)
    write_json(
        files.config, {"format": WEIGHTS_FORMAT, **identity, "weights_sha256": weights_sha256}
    )


def read_model_config(files: ModelFiles) -> tuple[ModelConfig, int]:
    """``(model spec, vocab size)`` from ``model_config.json``."""
    path = files.config
    if not path.is_file():
        raise ModelLoadError(f"{path}: not found (run the train stage)")
    raw = read_json(path)
    if raw.get("format") != WEIGHTS_FORMAT:
        raise ModelLoadError(f"{path}: format {raw.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
    try:
        return ModelConfig.model_validate(raw["model"]), int(raw["vocab_size"])
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid model config ({exc})") from None


def load_model(
    files: ModelFiles, device: torch.device | str = "cpu", backend: str = "auto"
) -> MoETransformer:
    """The trained model on ``device``, in eval mode, its MoE layers on ``backend``.

    Eval mode is what makes the scores causal: MoE layers are dropless there (no token can take
    another's expert slot) and an ``expert_choice`` router, which is not causal, routes by
    token-choice top-k instead, as :mod:`pipeline.model.router` documents. Such a model is
    evaluated with routing that differs from its training routing; the log says so.
    """
    cfg, vocab_size = read_model_config(files)
    verify_weights(files)
    if cfg.moe.router == "expert_choice":
        log.warning(
            "%s: trained with expert_choice routing, which is not causal; evaluating with the "
            "model's eval-mode token-choice top-%d routing instead",
            files.weights,
            cfg.moe.top_k,
        )
    model = MoETransformer(cfg, vocab_size, backend=backend)
    try:
        load_safetensors(model, str(files.weights))
    except (SafetensorError, OSError) as exc:
        raise ModelLoadError(
            f"{files.weights}: unreadable ({exc}); truncated or corrupted: re-run the train stage"
        ) from None
    return model.to(device).eval()


def verify_weights(files: ModelFiles) -> None:
    """Refuse weights that are missing or differ from what training wrote (the SHA-256 it
    recorded in ``model_config.json``)."""
    if not files.weights.is_file():
        raise ModelLoadError(f"{files.weights}: not found (run the train stage)")
    recorded = read_json(files.config).get("weights_sha256")
    if recorded is None:
        raise ModelLoadError(
            f"{files.config}: records no weights_sha256 (written by an earlier version), so "
            f"{files.weights} cannot be checked; re-run the train stage"
        )
    actual = sha256_file(files.weights)
    if actual != recorded:
        raise ModelLoadError(
            f"{files.weights}: SHA-256 {actual[:16]}... differs from the {recorded[:16]}... that "
            f"training recorded in {files.config} (damaged or replaced); re-run the train stage "
            "(dvc repro train)"
        )
