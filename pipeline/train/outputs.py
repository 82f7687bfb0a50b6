"""What a training run is (its fingerprint), where its checkpoints live, and the DVC metrics
and plots files it leaves behind."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from pipeline.config import NOT_THE_RUN, Params
from pipeline.io import write_csv, write_json
from pipeline.paths import Paths


def run_fingerprint(
    params: Params, train_tokens_sha256: str, dense_weights_sha256: str | None = None
) -> str:
    """Identifies one training run: the seed, what ``train`` trains (every key but the
    ``runtime`` and ``monitor`` sections, :data:`pipeline.config.NOT_THE_RUN`), the training
    data and, for an upcycled run, the dense weights it starts from (``train.init``; the path
    alone would let a replaced model resume another run's checkpoint). A run from scratch
    leaves ``train.init`` out, so its fingerprint is the one it had before that section existed.

    ``dvc repro`` keeps ``models/checkpoints`` between runs (``persist: true``) so that a killed
    run resumes; keying the checkpoints by this fingerprint lets only the same run resume (under
    any backend, precision or layout), while a variant (``dvc exp run -S train.model....``, new
    data) starts afresh instead of picking up, or being refused, another run's state.
    """
    upcycled = params.train.init.upcycle_from is not None
    if upcycled != (dense_weights_sha256 is not None):
        raise ValueError("dense_weights_sha256 is required when, and only when, upcycling")
    left_out = set(NOT_THE_RUN) | (set() if upcycled else {"init"})
    train = params.train.model_dump(mode="json", exclude=left_out)
    identity = {"seed": params.seed, "train": train, "train_tokens": train_tokens_sha256}
    if upcycled:
        identity["dense_weights"] = dense_weights_sha256
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return f"run-{digest[:12]}"


def remove_other_runs_checkpoints(paths: Paths, run_key: str) -> list[Path]:
    """Delete the checkpoint directories of other runs (other params or data); returns them.

    Only the current run can resume from its checkpoints, and finished runs keep their results
    in ``model.safetensors`` and the metrics, so the others are dead weight.
    """
    if not paths.checkpoints_dir.is_dir():
        return []
    others = [d for d in paths.checkpoints_dir.iterdir() if d.name != run_key]
    for other in others:
        shutil.rmtree(other) if other.is_dir() else other.unlink()
    return others


def write_outputs(paths: Paths, metrics: dict[str, Any], history: dict[str, list[dict]]) -> None:
    """``metrics/train.json`` and the plot data: ``loss.csv`` (every step), ``val.csv`` (every
    validation), ``load.csv`` (expert load per layer at each logging step), ``routing.csv``
    (routing health per layer at each logging step) and ``routing_digest.csv`` (every step's
    routing digest and chain: :mod:`pipeline.train.routing_health`)."""
    write_json(paths.train_metrics, metrics)
    plots = paths.train_plots_dir
    write_csv(
        plots / "loss.csv",
        ["step", "train_loss", "aux_loss", "lr"],
        ([r["step"], r["loss"], r["aux_loss"], r["lr"]] for r in history["train"]),
    )
    write_csv(
        plots / "val.csv",
        ["step", "val_loss"],
        ([r["step"], r["val_loss"]] for r in history["val"]),
    )
    write_csv(
        plots / "load.csv",
        ["step", "layer", "expert", "load"],
        ([r["step"], r["layer"], r["expert"], r["load"]] for r in history["load"]),
    )
    health = history["routing"]
    columns = list(health[0]) if health else ["step", "layer"]
    write_csv(plots / "routing.csv", columns, ([r[c] for c in columns] for r in health))
    write_csv(
        plots / "routing_digest.csv",
        ["step", "digest", "chain"],
        ([r["step"], r["digest"], r["chain"]] for r in history["routing_digest"]),
    )
