"""Expert parallelism and the model-parallel strategy on CPU processes (gloo).

Every worker compares itself with the single-process model on the same global batch (see
ep_worker.py for the fp32 tolerances and why). Each multi-process test has a timeout, so a
collective that hangs fails the test instead of blocking CI.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.config import ConfigError, parse_params
from pipeline.parallel.checkpoint import export_checkpoint

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("parallel_launch", HERE / "launch.py")
launch_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(launch_mod)


def run_ep(scenario: str, dp: int, ep: int, *extra: str, timeout: float = 60) -> None:
    outputs = launch_mod.launch(
        HERE / "ep_worker.py", dp * ep, [scenario, str(dp), str(ep), *extra], timeout
    )
    assert all(out.strip().endswith("ok") for out in outputs)


@pytest.mark.multiprocess
def test_ep2_matches_one_process_forward_gradients_and_losses_over_steps():
    run_ep("train", dp=1, ep=2)


@pytest.mark.multiprocess
def test_rank_whose_experts_get_no_token():
    run_ep("no_token", dp=1, ep=2)


@pytest.mark.multiprocess
def test_every_token_to_one_expert():
    run_ep("one_expert", dp=1, ep=2)


@pytest.mark.multiprocess
def test_dcp_checkpoint_reshards_between_ep2_and_ep1(tmp_path):
    run_ep("reshard", 1, 2, str(tmp_path))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dp2_by_ep2_on_four_processes_matches_one_process():
    run_ep("train", dp=2, ep=2, timeout=120)


def _train(root: Path, out: Path, devices: int, micro: int, strategy: str, ep: int) -> dict:
    """Lightning launches the other ranks itself: no rank variables in the environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(launch_mod.REPO)
    args = [str(root), str(out), str(devices), str(micro), strategy, str(ep)]
    proc = subprocess.run(
        [sys.executable, str(HERE / "lightning_worker.py"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.multiprocess
def test_lightning_ep2_trains_like_one_process_and_exports_from_dcp(tmp_path, tiny):
    """Lightning's launcher with strategy model_parallel, EP=2, vs one process, same global
    batch: the same losses (Switch loss included: its expert fractions are global), validation
    and logged load; the DCP checkpoint converts to the same single-file weights."""
    tiny.write_tokens(tmp_path / "ep")
    tiny.write_tokens(tmp_path / "single")
    ep = _train(tmp_path / "ep", tmp_path / "ep.json", 2, 2, "model_parallel", 2)
    single = _train(tmp_path / "single", tmp_path / "single.json", 1, 4, "auto", 1)
    losses = [[r["loss"] for r in run["history"]["train"]] for run in (ep, single)]
    assert len(losses[0]) == 4
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert ep["history"]["val"][-1]["val_loss"] == pytest.approx(
        single["history"]["val"][-1]["val_loss"], rel=1e-5
    )
    loads = [[r["load"] for r in run["history"]["load"]] for run in (ep, single)]
    assert loads[0] == pytest.approx(loads[1], abs=1e-6)
    models = tmp_path / "ep" / "models"
    export_checkpoint(models / "checkpoints" / "last.ckpt", tmp_path / "converted")
    trained, converted = (
        load_file(models / "model.safetensors"),
        load_file(tmp_path / "converted" / "model.safetensors"),
    )
    assert trained.keys() == converted.keys()
    assert all(torch.equal(trained[k], converted[k]) for k in trained)


def _params(**parallel) -> dict:
    return {"train": {"devices": 4, "strategy": "model_parallel", "parallel": parallel}}


def test_layout_rules_name_the_keys():
    assert parse_params(_params(expert_parallel=2)).train.parallel.expert_parallel == 2
    with pytest.raises(ConfigError, match="expert_parallel = 3 must divide .*num_experts = 8"):
        parse_params(_params(expert_parallel=3))
    with pytest.raises(ConfigError, match=r"data_parallel \(4\) × expert_parallel \(2\) .* = 4"):
        parse_params(_params(data_parallel=4, expert_parallel=2))
    with pytest.raises(ConfigError, match="needs train.strategy: model_parallel"):
        parse_params(
            {"train": {"strategy": "ddp", "parallel": {"expert_parallel": 2}, "devices": 2}}
        )
    with pytest.raises(ConfigError, match="fsdp2"):
        parse_params(_params(expert_parallel=2, sharding="fsdp2"))
