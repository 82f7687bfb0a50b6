"""Expert parallelism and the model-parallel strategy on CPU processes (gloo).

Every worker compares itself with the single-process model on the same global batch (see
ep_worker.py for the fp32 tolerances and why). Each multi-process test has a timeout, so a
collective that hangs fails the test instead of blocking CI.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, parse_params

HERE = Path(__file__).parent


@pytest.fixture
def run_ep(launcher):
    """``run_ep(scenario, dp, ep, *extra)``: ep_worker.py on dp × ep processes, all must pass."""

    def run(scenario: str, dp: int, ep: int, *extra: str, timeout: float = 60) -> None:
        args = [scenario, str(dp), str(ep), *extra]
        outputs = launcher.launch(HERE / "ep_worker.py", dp * ep, args, timeout)
        assert all(out.strip().endswith("ok") for out in outputs)

    return run


@pytest.mark.multiprocess
def test_ep2_matches_one_process_forward_gradients_and_losses_over_steps(run_ep):
    run_ep("train", dp=1, ep=2)


@pytest.mark.multiprocess
@pytest.mark.parametrize("dp,ep", [(2, 1), (1, 2)], ids=["dp2", "ep2"])
def test_global_balance_over_two_ranks_equals_one_process(run_ep, dp, ep):
    """1 × B against 2 ranks × B/2, data- or expert-parallel: loss value and gradients."""
    run_ep("global_balance", dp=dp, ep=ep)


@pytest.mark.multiprocess
def test_rank_whose_experts_get_no_token(run_ep):
    run_ep("no_token", dp=1, ep=2)


@pytest.mark.multiprocess
def test_every_token_to_one_expert(run_ep):
    run_ep("one_expert", dp=1, ep=2)


@pytest.mark.multiprocess
def test_dcp_checkpoint_reshards_between_ep2_and_ep1(run_ep, tmp_path):
    run_ep("reshard", 1, 2, str(tmp_path))


@pytest.mark.slow
@pytest.mark.multiprocess
def test_dp2_by_ep2_on_four_processes_matches_one_process(run_ep):
    run_ep("train", dp=2, ep=2, timeout=120)


@pytest.mark.multiprocess
@pytest.mark.parametrize("dp,ep", [(2, 1), (1, 2)])
def test_fsdp2_matches_one_process_forward_gradients_norm_and_steps(run_ep, dp, ep):
    """FSDP2 over the whole world, alone (EP=1) and beside expert parallelism (EP=2)."""
    run_ep("train_fsdp2", dp=dp, ep=ep)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fsdp2_with_dp2_by_ep2_on_four_processes_matches_one_process(run_ep):
    run_ep("train_fsdp2", dp=2, ep=2, timeout=120)


def _params(**parallel) -> dict:
    runtime = {"devices": 4, "strategy": "model_parallel", "parallel": parallel}
    return {"train": {"runtime": runtime}}


def test_layout_rules_name_the_keys():
    assert parse_params(_params(expert_parallel=2)).train.runtime.parallel.expert_parallel == 2
    with pytest.raises(ConfigError, match="expert_parallel = 3 must divide .*num_experts = 8"):
        parse_params(_params(expert_parallel=3))
    with pytest.raises(ConfigError, match=r"data_parallel \(4\) × expert_parallel \(2\) .* = 4"):
        parse_params(_params(data_parallel=4, expert_parallel=2))
    with pytest.raises(ConfigError, match="needs train.runtime.strategy: model_parallel"):
        runtime = {"strategy": "ddp", "parallel": {"expert_parallel": 2}, "devices": 2}
        parse_params({"train": {"runtime": runtime}})
    both = parse_params(_params(expert_parallel=2, sharding="fsdp2")).train.runtime.parallel
    assert (both.expert_parallel, both.sharding) == (2, "fsdp2")
