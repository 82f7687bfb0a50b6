"""lm-evaluation-harness's own ``HFLM`` on the exported Hugging Face directory.

The ``hf`` evaluation path (``evaluate.model: hf``) scores the export instead of the native model:
what a user of the published directory gets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from pipeline.export.hf_dir import ExportError, verify_export

log = logging.getLogger(__name__)


def load_hf_lm(hf_dir: Path, batch_size: int, device: torch.device | str = "cpu"):
    """``HFLM`` on ``hf_dir``, after :func:`verify_export` has checked that the directory is
    complete and is what the export wrote."""
    if not (hf_dir / "config.json").is_file():
        raise ExportError(
            f"evaluate.model is 'hf' but {hf_dir} holds no exported model (run the export stage)"
        )
    verify_export(hf_dir)
    from lm_eval.models.huggingface import HFLM

    log.info("lm-eval model: HFLM(%s) on %s", hf_dir, device)
    return HFLM(pretrained=str(hf_dir), batch_size=batch_size, device=str(device))
