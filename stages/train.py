"""DVC stage ``train``: fit the MoE language model on the token files.

``python -m stages.train`` reads ``data/tokens/{train,validation}/`` and writes
``models/checkpoints/<run>/{last,best}.ckpt`` (kept between ``dvc repro`` runs and keyed by
:func:`~pipeline.train.outputs.run_fingerprint`, so that a killed run resumes),
``models/model.safetensors`` + ``model_config.json``, ``metrics/train.json`` (what training
computed), ``metrics/train_timing.json`` (what it measured: wall time, throughput, MFU; apart since
no stage may depend on them) and ``plots/train/{loss,val,load}.csv``. An upcycled run
(``train.init.upcycle_from``) tags its MLflow run with the dense model's directory and weights
SHA-256 (``input.model.sha256``) and, when found, the run that trained it
(``upstream.train.run_id``). With several processes (``train.runtime.devices``)
Lightning re-executes this module in each extra one; only global rank zero opens an MLflow run
or writes files; its run also holds the machine's ``system/...`` metrics (CPU, memory, GPU
where ``nvidia-ml-py`` finds one) sampled during training
(:meth:`pipeline.tracking.StageRun.system_metrics`). Each process keeps the host memory its steps
free for the next step to reuse (:mod:`pipeline.host_memory`).
"""

from __future__ import annotations

import logging

from lightning.pytorch.loggers import MLFlowLogger

from pipeline.config import Params, load_params
from pipeline.data.shards import open_split, read_manifest, unigram_entropy
from pipeline.host_memory import keep_freed_host_memory
from pipeline.io import sha256_file, write_json
from pipeline.paths import Paths
from pipeline.tracking import TRAIN_TIMINGS, split_timings, stage_run, tracking_uri
from pipeline.train.outputs import remove_other_runs_checkpoints, run_fingerprint, write_outputs
from pipeline.train.trainer import is_rank_zero_process, train
from pipeline.train.upcycle import dense_source
from stages.common import run_main

log = logging.getLogger(__name__)


def run(
    params: Params,
    paths: Paths,
    run_key: str,
    mlflow_run_id: str | None = None,
    dense_sha256: str | None = None,
) -> dict:
    """Train; on global rank zero write the metrics and plot files. Returns the metrics, with
    the unigram entropy of the training tokens beside the losses for scale, and for an upcycled
    run the dense weights' SHA-256 (``upcycled_from_sha256``: the card names them from here).

    With ``mlflow_run_id``, Lightning's MLFlowLogger logs the step metrics into that run (the
    tracking URI is passed explicitly: left alone it would fall back to a file store).
    """
    logger = (
        MLFlowLogger(tracking_uri=tracking_uri(), run_id=mlflow_run_id) if mlflow_run_id else None
    )
    result = train(params, paths, run_key, logger=logger)
    if result.is_global_zero:
        train_split = open_split(paths.token_split("train"), verify=False)  # verified at setup
        result.metrics["unigram_entropy"] = unigram_entropy(train_split)
        if dense_sha256 is not None:
            result.metrics["upcycled_from_sha256"] = dense_sha256
        computed, timings = split_timings(result.metrics, TRAIN_TIMINGS)
        write_outputs(paths, computed, result.history)
        write_json(paths.train_timing, timings)
    return result.metrics


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = {
        "train_tokens": read_manifest(paths.token_split("train")).sha256,
        "validation_tokens": read_manifest(paths.token_split("validation")).sha256,
    }
    source = dense_source(params.train.init)  # checked before any checkpoint is touched
    dense_sha256 = source.weights_sha256 if source is not None else None
    run_key = run_fingerprint(params, inputs["train_tokens"], dense_sha256)
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
    upstream = {"tokenize": ("train_tokens", "validation_tokens")}
    if source is not None:  # upcycled: the dense weights are an input, their train run upstream
        inputs = {**inputs, "model": dense_sha256}
        upstream = {**upstream, "train": ("model",)}
    with stage_run("train", params, inputs, upstream, paths.train_run) as tracked:
        if source is not None:
            tracked.set_tags(source.tags())
        with tracked.system_metrics():  # CPU, memory, GPU: rank zero's machine
            metrics = run(params, paths, run_key, tracked.run_id, dense_sha256)
        tracked.log_metrics({k: v for k, v in metrics.items() if isinstance(v, int | float)})
        tracked.set_outputs(
            {
                "model": sha256_file(paths.model_files.weights),
                "train_metrics": sha256_file(paths.train_metrics),
            }
        )
        for artifact in (paths.train_metrics, paths.train_timing, paths.model_files.config):
            tracked.log_artifact(artifact)


if __name__ == "__main__":
    run_main("train", main, process_setup=keep_freed_host_memory)
