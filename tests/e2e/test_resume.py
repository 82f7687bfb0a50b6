"""A training killed with SIGKILL under ``dvc repro`` resumes, on the next ``dvc repro``, to the
weights and losses of an uninterrupted run."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import torch
from safetensors.torch import load_file

from pipeline.io import sha256_file

pytestmark = pytest.mark.slow

KILL_TIMEOUT_SECONDS = 300


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
    resumed_sha = sha256_file(repo.path / "models/model.safetensors")

    for run_dir in (repo.path / "models/checkpoints").iterdir():  # now train without a break
        for ckpt in run_dir.iterdir():
            ckpt.unlink()
    repo.dvc("repro", "--force", "train")
    assert loss_rows(repo) == resumed_rows  # every step's loss, bit for bit (CPU)
    straight_weights = load_file(repo.path / "models/model.safetensors")
    assert straight_weights.keys() == resumed_weights.keys()
    for name, tensor in straight_weights.items():
        assert torch.equal(tensor, resumed_weights[name]), name
    # and the file byte for byte: save_model writes the metadata in one order (it did not)
    assert sha256_file(repo.path / "models/model.safetensors") == resumed_sha


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
