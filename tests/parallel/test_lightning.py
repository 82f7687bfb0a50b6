"""The layouts end to end through Lightning's launcher (gloo, CPU): each run trains the tiny
set-up of tests/train on the same global batch of 4 windows, so every layout must reproduce the
single-process loss curve.

Tolerances (fp32). Losses: ``rel=1e-5``; the layouts sum the same products in another order
(per-rank partial sums, all-reduce / reduce-scatter, all-to-all-fed grouped GEMMs), which moves
a loss by a few ulps per step; the logged gradient norm (of the whole gradient, however it is
sharded) agrees as the gradients do, to ``rel=1e-4``. Trained weights: ``atol=1e-5,
rtol=1e-4``; AdamW divides each update by the root of the second moment, so a gradient's
rounding difference becomes a weight difference of up to ~1e-6 after 4 steps at lr 1e-2
(2.1e-6 measured for FSDP2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline.paths import Paths
from pipeline.train.consolidate import export_checkpoint

LOSS = {"rel": 1e-5}
GRAD_NORM = {"rel": 1e-4}  # the gradient tolerance of ep_worker.py
WEIGHTS = {"atol": 1e-5, "rtol": 1e-4}


def losses(run: dict) -> list[float]:
    return [row["loss"] for row in run["history"]["train"]]


def train(launcher, tiny, root: Path, devices: int, micro: int, strategy: str, **opts) -> dict:
    """One run of lightning_worker.py in a fresh ``root``; ``opts``: parallel (dict), steps,
    stop_after, train (more ``train`` keys)."""
    if not root.exists():
        tiny.write_tokens(root)
    args = [str(devices), str(micro), strategy, json.dumps(opts.get("parallel", {}))]
    args += [str(opts.get("steps", 4)), str(opts.get("stop_after", 0)), "0"]
    args.append(json.dumps(opts.get("train", {})))
    return launcher.lightning_train(root, root.with_suffix(".json"), args)


@pytest.fixture(scope="module")
def single(launcher, tiny, tmp_path_factory):
    """One process, plain Lightning (no mesh), 4 steps: the reference curve and weights."""
    root = tmp_path_factory.mktemp("single") / "run"
    run = train(launcher, tiny, root, 1, 4, "auto")
    assert len(run["grad_norm"]) == 4  # logged at every step (log_every 1)
    return run, load_file(root / "models" / "model.safetensors")


def assert_same_weights(actual: dict, expected: dict, **tol) -> None:
    assert actual.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(
            actual[key], expected[key], **tol, msg=lambda m, key=key: f"{key}: {m}"
        )


def assert_dcp_exports_the_trained_weights(root: Path, tmp_path: Path, run_key: str) -> dict:
    """The DCP ``last.ckpt/`` converts to exactly the weights the run exported."""
    paths = Paths(root=root)
    export_checkpoint(paths.last_checkpoint(run_key), tmp_path / "converted")
    trained = load_file(paths.model_files.weights)
    assert_same_weights(
        load_file(tmp_path / "converted" / "model.safetensors"), trained, atol=0, rtol=0
    )
    return trained


@pytest.mark.slow
@pytest.mark.multiprocess
def test_ep2_trains_like_one_process_and_exports_from_dcp(launcher, tiny, single, tmp_path):
    """Strategy model_parallel, EP=2: the same losses (Switch loss included: its expert
    fractions are global), validation and logged load as one process."""
    expected, expected_weights = single
    ep = train(
        launcher, tiny, tmp_path / "ep", 2, 2, "model_parallel", parallel={"expert_parallel": 2}
    )
    assert len(losses(ep)) == 4
    assert losses(ep) == pytest.approx(losses(expected), **LOSS)
    assert ep["grad_norm"] == pytest.approx(expected["grad_norm"], **GRAD_NORM)
    val = [run["history"]["val"][-1]["val_loss"] for run in (ep, expected)]
    assert val[0] == pytest.approx(val[1], **LOSS)
    loads = [[r["load"] for r in run["history"]["load"]] for run in (ep, expected)]
    assert loads[0] == pytest.approx(loads[1], abs=1e-6)
    # Every step routed every token to the same experts: each rank hashed its half of the step
    # at its positions in the global batch, and the all-reduced digests are one process's.
    digests = [run["history"]["routing_digest"] for run in (ep, expected)]
    assert [r["step"] for r in digests[1]] == [1, 2, 3, 4] and digests[0] == digests[1]
    trained = assert_dcp_exports_the_trained_weights(tmp_path / "ep", tmp_path, tiny.RUN_KEY)
    assert_same_weights(trained, expected_weights, **WEIGHTS)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_global_balance_is_the_same_run_on_one_process_and_on_ep2_with_accumulation(
    launcher, tiny, tmp_path
):
    """balance: global makes the split of a global batch irrelevant: 4 windows as one micro-batch
    on one process, and as 2 accumulated micro-batches of 1 window on each of 2 expert-parallel
    ranks (the routing pre-pass counting both, its collectives on both ranks), give the same
    loss curve to the layouts' fp32 tolerance and the same routing at every step."""
    balance = {"model": {"moe": {"balance": "global", "aux_loss_weight": 0.05}}}
    one = train(launcher, tiny, tmp_path / "one", 1, 4, "auto", train=balance)
    ep = train(launcher, tiny, tmp_path / "ep", 2, 1, "model_parallel",
               parallel={"expert_parallel": 2}, train={**balance, "grad_accum": 2})  # fmt: skip
    assert losses(ep) == pytest.approx(losses(one), **LOSS)
    assert ep["history"]["routing_digest"] == one["history"]["routing_digest"]


@pytest.mark.multiprocess
@pytest.mark.parametrize(
    "ep", [1, pytest.param(2, marks=pytest.mark.slow)], ids=["fsdp2", "fsdp2-ep2"]
)
def test_fsdp2_trains_like_one_process_and_exports_the_same_weights(
    launcher, tiny, single, tmp_path, ep
):
    """FSDP2 over 2 processes (with EP=2 beside it in the second case): the loss curve and the
    validation loss of one process, and its exported weights within the AdamW tolerance."""
    expected, expected_weights = single
    parallel = {"sharding": "fsdp2", "expert_parallel": ep}
    run = train(launcher, tiny, tmp_path / "fsdp2", 2, 2, "model_parallel", parallel=parallel)
    assert losses(run) == pytest.approx(losses(expected), **LOSS)
    assert run["grad_norm"] == pytest.approx(expected["grad_norm"], **GRAD_NORM)
    val = [r["history"]["val"][-1]["val_loss"] for r in (run, expected)]
    assert val[0] == pytest.approx(val[1], **LOSS)
    trained = assert_dcp_exports_the_trained_weights(tmp_path / "fsdp2", tmp_path, tiny.RUN_KEY)
    assert_same_weights(trained, expected_weights, **WEIGHTS)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_resume_at_another_layout_continues_the_uninterrupted_run(launcher, tiny, tmp_path):
    """4 of 8 steps on 2 processes with EP=2, stopped; resumed on 1 process (EP=1) from the DCP
    checkpoint (weights, AdamW moments, scheduler, sampler position, history). The resumed run's
    steps 5..8 equal those of an uninterrupted 8-step EP=1 run to the same fp32 tolerance as the
    first four (the layouts differ in summation order only, so equality is to rounding, not bit
    for bit); a lost optimizer state or sampler position would be off by far more."""
    root, ep2 = tmp_path / "resumed", {"expert_parallel": 2}
    first = train(launcher, tiny, root, 2, 2, "model_parallel", parallel=ep2, steps=8, stop_after=4)
    assert len(losses(first)) == 4
    resumed = train(launcher, tiny, root, 1, 4, "model_parallel", steps=8)
    straight = train(launcher, tiny, tmp_path / "straight", 1, 4, "model_parallel", steps=8)
    assert len(losses(resumed)) == 8
    assert losses(resumed)[:4] == losses(first)  # the history came back with the checkpoint
    assert losses(resumed)[4:] == pytest.approx(losses(straight)[4:], **LOSS)
    val = [[r["val_loss"] for r in run["history"]["val"]] for run in (resumed, straight)]
    assert val[0] == pytest.approx(val[1], **LOSS)
    assert_same_weights(
        load_file(root / "models" / "model.safetensors"),
        load_file(tmp_path / "straight" / "models" / "model.safetensors"),
        **WEIGHTS,
    )
