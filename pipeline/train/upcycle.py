"""A run's initial weights from a dense model's files (``train.init.upcycle_from``).

The dense model is a directory as the train stage writes it (``model.safetensors`` +
``model_config.json``): :func:`dense_source` checks it and names it (its directory, the weights'
SHA-256) for the run fingerprint and the MLflow tags (the stage finds the run that trained it by
that SHA-256, as export finds its train run); :func:`upcycle` loads it and maps its weights into
the MoE model (:mod:`pipeline.model.upcycling`). The trainer upcycles only a run that starts: a resumed run
restores its checkpoint instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import ConfigError, InitConfig
from pipeline.io import read_json
from pipeline.model import MoETransformer
from pipeline.model.upcycling import upcycle_into
from pipeline.model_io import load_model, read_model_config, verify_weights
from pipeline.paths import ModelFiles

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseSource:
    """The dense model a run is upcycled from."""

    directory: Path
    weights_sha256: str

    @property
    def files(self) -> ModelFiles:
        return ModelFiles.in_dir(self.directory)

    def tags(self) -> dict[str, str]:
        """The upcycled run's lineage, as MLflow tags."""
        return {"upcycle.from": str(self.directory), "upcycle.weights_sha256": self.weights_sha256}


def dense_source(init: InitConfig) -> DenseSource | None:
    """The checked dense model of ``init``; None for a run from scratch."""
    if init.upcycle_from is None:
        return None
    directory = Path(init.upcycle_from)
    files = ModelFiles.in_dir(directory)
    missing = [path.name for path in (files.weights, files.config) if not path.is_file()]
    if missing:
        raise ConfigError(
            f"train.init.upcycle_from = {init.upcycle_from!r}: no {' or '.join(missing)} there; "
            "expected a model directory as the train stage writes it (a copy of "
            "models/model.safetensors and models/model_config.json), or null to train from scratch"
        )
    read_model_config(files)  # in the format the train stage writes
    verify_weights(files)  # the weights are the ones its training recorded
    return DenseSource(directory, read_json(files.config)["weights_sha256"])


def upcycle(model: MoETransformer, init: InitConfig, seed: int) -> DenseSource:
    """Overwrite ``model``'s weights with the upcycled dense model of ``init``."""
    source = dense_source(init)
    if source is None:
        raise ValueError("upcycle() needs train.init.upcycle_from")
    dense = load_model(source.files)  # on the CPU, like the model it initialises
    upcycle_into(model, dense, init, seed, str(source.directory))
    log.info(
        "upcycled from %s (weights SHA-256 %s..., method %s)",
        source.directory,
        source.weights_sha256[:16],
        init.method,
    )
    return source
