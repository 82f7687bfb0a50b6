"""The whole pipeline as users run it: ``dvc repro`` of every stage on tiny params, variants
through ``dvc exp run`` tracked in a live MLflow server, and a killed training that resumes."""

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


def read_json(path):
    return json.loads(path.read_text())


def test_repro_and_an_experiment_reach_a_live_mlflow_server(
    make_scratch_repo, tiny_pipeline, mlflow_server, mlflow_rest
):
    repo = make_scratch_repo(tiny_pipeline)
    repo.env.update(MLFLOW_TRACKING_URI=mlflow_server, MLFLOW_EXPERIMENT_NAME="e2e")
    out = repo.dvc("repro")
    for stage in ("prepare", "tokenize", "train", "export", "evaluate", "card"):
        assert f"Running stage '{stage}'" in out
    assert (repo.path / "models/hf/README.md").is_file()
    baseline = read_json(repo.path / "metrics/eval.json")
    repo.git("add", "-A")
    repo.git("commit", "-qm", "baseline run")

    repo.dvc("exp", "run", "-n", "four-to-two", "-S", "train.model.moe.num_experts=2")
    shown = repo.dvc("exp", "show", "--no-pager", "--csv")
    assert "four-to-two" in shown
    diff = repo.dvc("metrics", "diff")
    assert "params_total" in diff  # fewer experts: fewer parameters
    assert read_json(repo.path / "metrics/eval.json").keys() == baseline.keys()

    experiment = mlflow_rest(mlflow_server, "experiments/get-by-name", experiment_name="e2e")
    runs = mlflow_rest(
        mlflow_server,
        "runs/search",
        {"experiment_ids": [experiment["experiment"]["experiment_id"]], "max_results": 100},
    )["runs"]
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
    ran = {line.split("'")[1] for line in repo.dvc("repro").splitlines() if "Running stage" in line}
    assert ran == {"evaluate", "card"}


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
