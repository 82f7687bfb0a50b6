"""DDP on CPU (gloo, two processes launched by Lightning) trains like one process on the same
global batch: the sampler gives each rank its half, DDP averages the gradients, and the
aux-loss-free router biases move by the loads of the whole global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.paths import Paths

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def run_worker(root: Path, out: Path, devices: int, micro_batch: int) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "ddp_worker.py"),
            str(root),
            str(out),
            str(devices),
            str(micro_batch),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.multiprocess
def test_two_cpu_processes_match_one_process_on_the_same_global_batch(tmp_path, tiny):
    tiny.write_tokens(tmp_path / "ddp")
    tiny.write_tokens(tmp_path / "single")
    ddp = run_worker(tmp_path / "ddp", tmp_path / "ddp.json", devices=2, micro_batch=2)
    single = run_worker(tmp_path / "single", tmp_path / "single.json", devices=1, micro_batch=4)
    ddp_losses = [row["loss"] for row in ddp["train"]]
    single_losses = [row["loss"] for row in single["train"]]
    assert len(ddp_losses) == 4
    # Every loss of this config is exactly invariant to the split (no Switch loss, see
    # test_invariance): only the fp32 summation order of the gradient all-reduce differs.
    assert ddp_losses == pytest.approx(single_losses, rel=1e-5)
    assert ddp["val"][-1]["val_loss"] == pytest.approx(single["val"][-1]["val_loss"], rel=1e-5)
    assert ddp["routing_digest"] == single["routing_digest"]  # the same decisions every step
    biases = [
        biases_of(Paths(root=tmp_path / run).last_checkpoint(tiny.RUN_KEY))
        for run in ("ddp", "single")
    ]
    assert biases[0].keys() == biases[1].keys() and biases[0]
    assert all(torch.equal(biases[0][k], biases[1][k]) for k in biases[0])  # integer load counts
    assert any(bias.abs().sum() > 0 for bias in biases[0].values())


def biases_of(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.endswith("expert_bias")}
