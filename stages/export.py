"""DVC stage ``export``: the trained model as a Hugging Face ``transformers`` directory.

``python -m stages.export`` reads ``models/model.safetensors`` + ``models/model_config.json``
(the model as trained, whatever ``params.yaml`` says today) and ``data/tokenizer``, and writes
``models/hf/`` (config, generation config, tokenizer, weights in ``card.export_dtype``); which
architecture is chosen, and which configs are refused, is documented in
:mod:`pipeline.export.architectures`. The export is logged from this stage's MLflow run as a
``transformers`` model and registered as a new version of ``card.model_name``
(:mod:`pipeline.export.registry`, which says what the MLflow artifact store holds). The ``card``
stage later adds ``README.md`` and the plots, which makes ``models/hf/`` a complete model
repository, and sets the card as that version's description.
"""

from __future__ import annotations

import logging

from pipeline.config import Params, load_params
from pipeline.data.digests import verify_digests
from pipeline.export.hf_dir import FILES, WEIGHTS, write_export
from pipeline.export.registry import register_export
from pipeline.io import sha256_file
from pipeline.model_io import load_model
from pipeline.paths import Paths
from pipeline.tracking import stage_run
from stages.common import require, run_main

log = logging.getLogger("stages.export")


def run(params: Params, paths: Paths) -> dict[str, float]:
    """Export; return the size of what was written. The tokenizer and the weights are checked
    against the digests their stages recorded before anything is built."""
    verify_digests(paths.tokenizer_dir, "tokenize")
    model = load_model(paths.model_files)
    out = paths.hf_dir
    write_export(model, paths.tokenizer_dir, out, params.card.export_dtype)
    size = (out / WEIGHTS).stat().st_size
    log.info("exported %s (%s, %.1f MB of weights)", out, params.card.export_dtype, size / 1e6)
    return {
        "export/weights_bytes": float(size),
        "export/params": float(model.num_params()["total"]),
    }


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = {
        "model": sha256_file(require(paths.model_files.weights, "train")),
        "tokenizer": sha256_file(require(paths.tokenizer_file, "tokenize")),
    }
    upstream = {"train": ("model",), "tokenize": ("tokenizer",)}
    with stage_run("export", params, inputs, upstream, paths.export_run) as tracked:
        metrics = run(params, paths)
        tracked.log_metrics(metrics)
        out = paths.hf_dir
        outputs = {name: sha256_file(out / name) for name in FILES}
        tracked.set_outputs(outputs)
        register_export(tracked, out, params.card.model_name, outputs[WEIGHTS])


if __name__ == "__main__":
    run_main("export", main)
