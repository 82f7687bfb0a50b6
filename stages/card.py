"""DVC stage ``card``: the model card, which makes ``models/hf/`` a complete model repository.

``python -m stages.card`` checks the export (:func:`~pipeline.export.hf_dir.verify_export`),
reads the metrics and stats the earlier stages wrote (the training's wall time and throughput
from ``metrics/train_timing.json``) plus ``dvc.lock``, copies the routing plots into
``models/hf/plots/`` and writes ``models/hf/README.md`` (:mod:`evaluation.card`); both go to
MLflow in a run of this stage, which finds the earlier stages' runs by the content of those
files (:mod:`pipeline.tracking`), and the card becomes the description of the registered model
version holding these weights (:func:`~pipeline.export.registry.describe_version`).

The card is a function of the files DVC gives this stage: a teammate's ``git clone`` + ``dvc
pull`` regenerates it byte for byte, whatever MLflow store or commit they have. So it names no
run id and no commit (the registered version's tags do), and from ``dvc.lock`` it lists only the
outputs that hold content, not those that change with every execution (:func:`per_execution`).
The timing file is a dependency of this stage alone: nothing else reads it, so a re-run of
train that wrote the same weights re-runs the card only.

``dvc.lock`` is read but is not a declared dependency: DVC rewrites it after every stage, this
one included, so declaring it would make the card permanently out of date. Its upstream entries
are current when this stage runs, since DVC records each stage as it finishes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import shutil
from pathlib import Path

import yaml

from evaluation.card import CardInputs, render_card
from pipeline.config import Params, load_params
from pipeline.export.hf_dir import FILES, WEIGHTS, verify_export
from pipeline.export.registry import describe_version
from pipeline.io import atomic_path, read_json, sha256_file, write_text
from pipeline.model_io import read_model_config
from pipeline.paths import Paths
from pipeline.tracking import stage_run
from stages.common import require, run_main

log = logging.getLogger("stages.card")

LOCKED_STAGES = ("prepare", "tokenize", "train", "export", "evaluate")


def per_execution(paths: Paths) -> set[str]:
    """The outputs whose bytes change with every execution (run ids, wall times), as ``dvc.lock``
    names them: not in the card."""
    files = (paths.prepare_run, paths.tokenize_run, paths.train_run, paths.export_run,
             paths.eval_run, paths.tokenize_timing, paths.train_timing)  # fmt: skip
    return {f.relative_to(paths.root).as_posix() for f in files}


PACKAGES = ("torch", "lightning", "transformers", "lm_eval", "huggingface_hub")


def card_inputs(paths: Paths) -> dict[str, str]:
    """The SHA-256 of each file the card reads, by the name its stage tags it with."""
    files = {
        "prepare_stats": (paths.prepare_stats, "prepare"),
        "tokenize_metrics": (paths.tokenize_metrics, "tokenize"),
        "train_metrics": (paths.train_metrics, "train"),
        **{name: (paths.hf_dir / name, "export") for name in FILES},
        "eval_metrics": (paths.eval_metrics, "evaluate"),
    }
    return {name: sha256_file(require(path, stage)) for name, (path, stage) in files.items()}


UPSTREAM = {
    "prepare": ("prepare_stats",),
    "tokenize": ("tokenize_metrics",),
    "train": ("train_metrics",),
    "export": FILES,
    "evaluate": ("eval_metrics",),
}


def read_lock(paths: Paths) -> dict[str, dict[str, str]]:
    """``{stage: {out path: md5}}`` for the upstream stages' content outputs (empty without a
    ``dvc.lock``)."""
    path, skipped = paths.dvc_lock, per_execution(paths)
    if not path.is_file():
        return {}
    stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages", {})
    return {
        name: {
            out["path"]: out["md5"]
            for out in stages[name].get("outs", [])
            if "md5" in out and out["path"] not in skipped
        }
        for name in LOCKED_STAGES
        if name in stages
    }


def environment(train_metrics: dict) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    peak = train_metrics.get("peak_flops_per_device")
    source = train_metrics.get("peak_flops_source", "n/a")
    versions["hardware"] = f"peak {peak:.3g} FLOP/s per device ({source})" if peak else "n/a"
    return versions


def copy_plots(paths: Paths) -> list[str]:
    """The routing PNGs into the model directory's ``plots/``; returns their paths relative to
    the model directory."""
    target = paths.card_plots_dir
    shutil.rmtree(target, ignore_errors=True)  # plots of a model with more layers than this one
    copied = []
    for png in sorted(paths.eval_plots_dir.rglob("*.png")):
        relative = png.relative_to(paths.eval_plots_dir)
        with atomic_path(target / relative) as tmp:
            shutil.copyfile(png, tmp)
        copied.append(target.joinpath(relative).relative_to(paths.hf_dir).as_posix())
    return copied


def run(params: Params, paths: Paths) -> Path:
    """Write ``README.md`` and the plots into the export directory; return the README path."""
    model, vocab_size = read_model_config(paths.model_files)
    train_metrics = {
        **read_json(require(paths.train_metrics, "train")),
        **read_json(require(paths.train_timing, "train")),
    }
    inputs = CardInputs(
        params=params,
        model=model,
        vocab_size=vocab_size,
        hf_config=verify_export(paths.hf_dir),
        eval_metrics=read_json(require(paths.eval_metrics, "evaluate")),
        train_metrics=train_metrics,
        prepare_stats=read_json(require(paths.prepare_stats, "prepare")),
        tokenize_metrics=read_json(require(paths.tokenize_metrics, "tokenize")),
        lock=read_lock(paths),
        environment=environment(train_metrics),
        plots=copy_plots(paths),
    )
    write_text(paths.card, render_card(inputs).content)
    return paths.card


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = card_inputs(paths)
    with stage_run("card", params, inputs, UPSTREAM, paths.card_run) as tracked:
        readme = run(params, paths)
        card_text = readme.read_text(encoding="utf-8")
        describe_version(tracked, params.card.model_name, inputs[WEIGHTS], card_text)
        tracked.log_artifact(readme, "model_card")
        for png in sorted(paths.card_plots_dir.rglob("*.png")):
            folder = png.parent.relative_to(paths.hf_dir).as_posix()
            tracked.log_artifact(png, f"model_card/{folder}")
    log.info("model card: %s", readme)


if __name__ == "__main__":
    run_main("card", main)
