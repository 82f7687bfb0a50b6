"""Load the trained model the way the train stage exported it.

Training writes ``models/model_config.json`` (``format``, ``model``: the ``train.model`` section
it trained with, ``vocab_size``) and ``models/model.safetensors`` (written with
``safetensors.torch.save_model``, tied tensors stored once), see
:func:`pipeline.train.checkpoint.export_weights`. The model is rebuilt from the saved config,
not from today's ``params.yaml``: evaluation must score the model that was trained, even when
the params have moved on since.

The ``hf`` evaluation path (``evaluate.model: hf``) scores the Hugging Face export instead, through
lm-eval's own ``HFLM``: what a user of the published directory would get.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from safetensors.torch import load_model as load_safetensors

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.export.hf_dir import verify_export
from pipeline.io import read_json
from pipeline.model import MoETransformer
from pipeline.train.checkpoint import WEIGHTS_FORMAT

CONFIG_FILE = "model_config.json"
WEIGHTS_FILE = "model.safetensors"

log = logging.getLogger(__name__)


class ModelLoadError(PipelineError):
    """The exported model is missing or not in the format training writes."""


def read_model_config(models_dir: Path) -> tuple[ModelConfig, int]:
    """``(model config, vocab size)`` from ``models_dir/model_config.json``."""
    path = models_dir / CONFIG_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path}: not found (run the train stage)")
    raw = read_json(path)
    if raw.get("format") != WEIGHTS_FORMAT:
        raise ModelLoadError(f"{path}: format {raw.get('format')!r}, expected {WEIGHTS_FORMAT!r}")
    try:
        return ModelConfig.model_validate(raw["model"]), int(raw["vocab_size"])
    except (KeyError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid model config ({exc})") from None


def load_model(models_dir: Path, device: torch.device | str = "cpu") -> MoETransformer:
    """The trained model on ``device``, in eval mode.

    Eval mode is what makes the scores causal: MoE layers are dropless there (no token can take
    another's expert slot) and an ``expert_choice`` router, which is not causal, routes by
    token-choice top-k instead, as :mod:`pipeline.model.router` documents. Such a model is
    evaluated with routing that differs from its training routing; the log says so.
    """
    cfg, vocab_size = read_model_config(models_dir)
    weights = models_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelLoadError(f"{weights}: not found (run the train stage)")
    if cfg.moe.router == "expert_choice":
        log.warning(
            "%s: trained with expert_choice routing, which is not causal; evaluating with the "
            "model's eval-mode token-choice top-%d routing instead",
            weights,
            cfg.moe.top_k,
        )
    model = MoETransformer(cfg, vocab_size)
    load_safetensors(model, str(weights))
    return model.to(device).eval()


def load_hf_lm(hf_dir: Path, batch_size: int, device: torch.device | str = "cpu"):
    """lm-eval's ``HFLM`` on the exported directory, after :func:`verify_export` has checked that
    the directory is complete and is what the export wrote."""
    if not (hf_dir / "config.json").is_file():
        raise ModelLoadError(
            f"evaluate.model is 'hf' but {hf_dir} holds no exported model (run the export stage)"
        )
    verify_export(hf_dir)
    from lm_eval.models.huggingface import HFLM

    log.info("lm-eval model: HFLM(%s) on %s", hf_dir, device)
    return HFLM(pretrained=str(hf_dir), batch_size=batch_size, device=str(device))
