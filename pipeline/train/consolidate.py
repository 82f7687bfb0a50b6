"""Turn a distributed training checkpoint into the trained model's files.

Under ``train.runtime.strategy: model_parallel`` checkpoints are DCP directories
(``models/checkpoints/<run>/last.ckpt/``); this writes the single-file ``model.safetensors`` +
``model_config.json`` that export and evaluation read, in one process:

    python -m pipeline.train.consolidate models/checkpoints/<run>/last.ckpt models
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pipeline.config import ModelConfig
from pipeline.model import MoETransformer
from pipeline.model_io import model_identity, save_model
from pipeline.parallel.dcp import METADATA_FILE, consolidate
from pipeline.paths import ModelFiles
from pipeline.train.checkpoint_io import CHECKPOINT_KEY


def model_from_checkpoint(directory: Path, prefix: str = "model.") -> MoETransformer:
    """The unsharded model of a Lightning DCP checkpoint (its identity comes from meta.pt)."""
    meta = torch.load(Path(directory) / METADATA_FILE, map_location="cpu", weights_only=True)
    identity = meta[CHECKPOINT_KEY]["identity"]
    model = MoETransformer(ModelConfig.model_validate(identity["model"]), identity["vocab_size"])
    weights = consolidate(directory)["state_dict"]
    model.load_state_dict({k.removeprefix(prefix): v for k, v in weights.items()})
    return model


def export_checkpoint(directory: Path, models_dir: Path) -> None:
    """Write ``models_dir/model.safetensors`` and ``model_config.json`` from a DCP checkpoint."""
    model = model_from_checkpoint(directory)
    save_model(model, model_identity(model.cfg, model.vocab_size), ModelFiles.in_dir(models_dir))


def main() -> None:
    parser = argparse.ArgumentParser(description=export_checkpoint.__doc__)
    parser.add_argument("checkpoint", type=Path, help="a DCP checkpoint directory (*.ckpt/)")
    parser.add_argument("models_dir", type=Path, help="where model.safetensors is written")
    args = parser.parse_args()
    export_checkpoint(args.checkpoint, args.models_dir)


if __name__ == "__main__":
    main()
