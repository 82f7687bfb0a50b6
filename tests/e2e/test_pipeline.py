"""The whole pipeline as users run it: ``dvc repro`` of every stage on tiny params, re-running
only what changed with the MLflow lineage found by content, variants through ``dvc exp run``
tracked in a live MLflow server, and a killed training that resumes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

KILL_TIMEOUT_SECONDS = 300
STAGES = ("prepare", "tokenize", "train", "export", "evaluate", "card")


def read_json(path):
    return json.loads(path.read_text())


def test_repro_and_an_experiment_reach_a_live_mlflow_server(
    make_scratch_repo, tiny_pipeline, mlflow_server, mlflow_rest
):
    repo = make_scratch_repo(tiny_pipeline)
    repo.env.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="e2e")
    assert ran(repo.dvc("repro")) == set(STAGES)
    assert (repo.path / "models/hf/README.md").is_file()
    baseline = read_json(repo.path / "metrics/eval.json")
    experiment = mlflow_rest(mlflow_server, "experiments/get-by-name", experiment_name="e2e")
    experiment_id = experiment["experiment"]["experiment_id"]
    kind = {t["key"]: t["value"] for t in experiment["experiment"]["tags"]}
    assert kind["mlflow.experimentKind"] == "custom_model_development"  # the model-training view

    def search() -> list[dict]:
        body = {"experiment_ids": [experiment_id], "max_results": 1000}
        return mlflow_rest(mlflow_server, "runs/search", body)["runs"]

    # A comment in prepare's code: prepare re-runs, writes the same bytes, and DVC stops there.
    before = search()
    with open(repo.path / "pipeline/data/sources.py", "a") as source:
        source.write("# a comment changes no data\n")
    out = repo.dvc("repro")
    assert ran(out) == {"prepare"}
    for stage in STAGES[1:]:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Data and pipelines are up to date" in repo.dvc("status")
    after = search()
    assert runs_per_stage(after) == {**runs_per_stage(before), "prepare": 2}
    assert prepare_run_behind(newest(after, "card"), after) == oldest(after, "prepare")
    repo.git("add", "-A")
    repo.git("commit", "-qm", "baseline run")

    # New tokens (and fewer experts): everything from tokenize on re-runs, prepare does not.
    out = repo.dvc(
        "exp", "run", "-n", "four-to-two", "-S", "tokenize.vocab_size=500",
        "-S", "train.model.moe.num_experts=2",
    )  # fmt: skip
    assert ran(out) == set(STAGES[1:])
    runs = search()
    assert prepare_run_behind(newest(runs, "card"), runs) == newest(runs, "prepare")
    shown = repo.dvc("exp", "show", "--no-pager", "--csv")
    assert "four-to-two" in shown
    diff = repo.dvc("metrics", "diff")
    assert "params_total" in diff  # fewer experts: fewer parameters
    assert read_json(repo.path / "metrics/eval.json").keys() == baseline.keys()

    train_runs = [r for r in runs if tag(r, "pipeline.stage") == "train"]
    assert len(train_runs) == 2
    experts = {param(r, "train.model.moe.num_experts") for r in train_runs}
    assert experts == {"4", "2"}
    assert {tag(r, "dvc.exp_name") for r in train_runs} == {None, "four-to-two"}
    for run in train_runs:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        history = mlflow_rest(
            mlflow_server, "metrics/get-history", run_id=run_id, metric_key="train/loss"
        )["metrics"]
        assert [m["step"] for m in history] == [5, 10, 15, 20, 25, 30]
        logged = {m["key"] for m in run["data"]["metrics"]}
        assert {"val/loss", "perf/tokens_per_s"} <= logged
        assert any(key.startswith("eval/") for key in logged), "eval metrics in the model's run"

    card_runs = [r for r in runs if tag(r, "pipeline.stage") == "card"]
    assert len(card_runs) == 2
    for run in card_runs:
        listed = mlflow_rest(
            mlflow_server, "artifacts/list", run_id=run["info"]["run_id"], path="model_card"
        )
        assert "model_card/README.md" in {f["path"] for f in listed["files"]}

    params = repo.params()  # another task list re-runs the evaluation and the card, nothing else
    params["evaluate"]["tasks"] = ["agreement"]
    repo.set_params(params)
    assert ran(repo.dvc("repro")) == {"evaluate", "card"}


def ran(dvc_output: str) -> set[str]:
    """The stages a ``dvc repro`` or ``dvc exp run`` ran."""
    return {line.split("'")[1] for line in dvc_output.splitlines() if "Running stage" in line}


def runs_per_stage(runs: list[dict]) -> dict[str, int]:
    return {stage: sum(tag(r, "pipeline.stage") == stage for r in runs) for stage in STAGES}


def by_start(runs: list[dict], stage: str) -> list[dict]:
    of_stage = [r for r in runs if tag(r, "pipeline.stage") == stage]
    return sorted(of_stage, key=lambda r: int(r["info"]["start_time"]))


def newest(runs: list[dict], stage: str) -> dict:
    return by_start(runs, stage)[-1]


def oldest(runs: list[dict], stage: str) -> dict:
    return by_start(runs, stage)[0]


def prepare_run_behind(card_run: dict, runs: list[dict]) -> dict:
    """The prepare run reached from a card run through the lineage tags (card -> train ->
    tokenize -> prepare); the card's own prepare tag must name the same run."""
    by_id = {r["info"]["run_id"]: r for r in runs}
    run = card_run
    for stage in ("train", "tokenize", "prepare"):
        run = by_id[tag(run, f"upstream.{stage}.run_id")]
    assert tag(card_run, "upstream.prepare.run_id") == run["info"]["run_id"]
    return run


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def param(run: dict, key: str) -> str | None:
    return next((p["value"] for p in run["data"].get("params", []) if p["key"] == key), None)


def loss_rows(repo) -> list[dict]:
    with open(repo.path / "plots/train/loss.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_sigkilled_training_resumes_under_dvc_repro_to_the_same_result(
    make_scratch_repo, tiny_pipeline
):
    override = {**tiny_pipeline, "train": {**tiny_pipeline["train"], "max_steps": 60}}
    repo = make_scratch_repo(override)
    repo.dvc("repro", "tokenize")

    dvc = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro", "train"],
        cwd=repo.path,
        env=repo.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    killed_at = kill_training_after_first_checkpoint(dvc, repo.path / "models/checkpoints")
    assert dvc.wait(timeout=60) != 0
    assert 10 <= killed_at < 60, "the kill must land mid-run"

    resumed = repo.dvc("repro", "train")
    assert "Running stage 'train'" in resumed
    resumed_rows = loss_rows(repo)
    resumed_weights = load_file(repo.path / "models/model.safetensors")

    for run_dir in (repo.path / "models/checkpoints").iterdir():  # now train without a break
        for ckpt in run_dir.iterdir():
            ckpt.unlink()
    repo.dvc("repro", "--force", "train")
    assert loss_rows(repo) == resumed_rows  # every step's loss, bit for bit (CPU)
    straight_weights = load_file(repo.path / "models/model.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():  # header bytes vary: safetensors metadata order
        assert torch.equal(tensor, resumed_weights[name]), name


def kill_training_after_first_checkpoint(dvc: subprocess.Popen, checkpoints) -> int:
    """SIGKILL the training process (dvc's child) once a ``last.ckpt`` exists; its step."""
    deadline = time.monotonic() + KILL_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        found = list(checkpoints.glob("*/last.ckpt")) if checkpoints.is_dir() else []
        if found:
            for child in psutil.Process(dvc.pid).children(recursive=True):
                if "stages.train" in " ".join(child.cmdline()):
                    os.kill(child.pid, signal.SIGKILL)
            step = torch.load(found[0], weights_only=True)["global_step"]
            return step
        if dvc.poll() is not None:
            pytest.fail(f"dvc repro train ended ({dvc.returncode}) before any checkpoint")
        time.sleep(0.05)
    pytest.fail("no checkpoint appeared in time")
