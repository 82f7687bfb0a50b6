"""DVC stage ``train``: fit the MoE language model on the token files.

``python -m stages.train`` reads ``data/tokens/{train,validation}.bin`` and writes
``models/checkpoints/<run>/{last,best}.ckpt`` (kept between ``dvc repro`` runs and keyed by
:func:`~pipeline.train.outputs.run_fingerprint`, so that a killed run resumes),
``models/model.safetensors`` + ``model_config.json``, ``metrics/train.json`` and
``plots/train/{loss,val,load}.csv``. With several processes (``train.runtime.devices``)
Lightning re-executes this module in each extra one; only global rank zero opens an MLflow run
or writes files.
"""

from __future__ import annotations

import logging

from lightning.pytorch.loggers import MLFlowLogger

from pipeline.config import Params, load_params
from pipeline.data.shards import read_header, unigram_entropy
from pipeline.paths import Paths
from pipeline.tracking import stage_run, tracking_uri
from pipeline.train.outputs import remove_other_runs_checkpoints, run_fingerprint, write_outputs
from pipeline.train.trainer import is_rank_zero_process, train
from stages.common import run_main

log = logging.getLogger(__name__)


def run(params: Params, paths: Paths, run_key: str, mlflow_run_id: str | None = None) -> dict:
    """Train; on global rank zero write the metrics and plot files. Returns the metrics, with
    the unigram entropy of the training tokens beside the losses for scale.

    With ``mlflow_run_id``, Lightning's MLFlowLogger logs the step metrics into that run (the
    tracking URI is passed explicitly: left alone it would fall back to a file store).
    """
    logger = (
        MLFlowLogger(tracking_uri=tracking_uri(), run_id=mlflow_run_id) if mlflow_run_id else None
    )
    result = train(params, paths, run_key, logger=logger)
    if result.is_global_zero:
        result.metrics["unigram_entropy"] = unigram_entropy(paths.tokens("train"))
        write_outputs(paths, result.metrics, result.history)
    return result.metrics


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = {
        "train_tokens": read_header(paths.tokens("train")).sha256,
        "validation_tokens": read_header(paths.tokens("validation")).sha256,
    }
    run_key = run_fingerprint(params, inputs["train_tokens"])
    if not is_rank_zero_process():  # a DDP worker: rank zero tracks and writes
        run(params, paths, run_key)
        return
    for removed in remove_other_runs_checkpoints(paths, run_key):
        log.info("removed the checkpoints of another run: %s", removed)
    log.info(
        "checkpoints: %s (train.runtime.resume: %s)",
        paths.checkpoint_dir(run_key),
        params.train.runtime.resume,
    )
    upstream = {"tokenize": paths.tokenize_run}
    with stage_run("train", params, inputs, upstream, paths.train_run) as tracked:
        metrics = run(params, paths, run_key, mlflow_run_id=tracked.run_id)
        tracked.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        for artifact in (paths.train_metrics, paths.model_files.config):
            tracked.log_artifact(artifact)


if __name__ == "__main__":
    run_main("train", main)
