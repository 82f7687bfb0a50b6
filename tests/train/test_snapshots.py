"""Weight snapshots for router saturation: written after the right optimizer step, with the
weights of that step, kept by a run resumed past it, and never left over from another run."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from pipeline.model_io import load_model
from pipeline.train.snapshots import snapshot_steps

from .test_resume import CrashAfter, Interrupted

# 8 steps of 2 micro-batches (a snapshot must wait for the step's last one); checkpoints at 4
# and 8, so a run killed during step 6 resumes from step 4.
SNAPSHOT = {
    "max_steps": 8,
    "grad_accum": 2,
    "micro_batch_size": 2,
    "monitor": {"snapshot_fractions": [0.5]},  # step 4
}


def test_snapshot_steps_are_the_nearest_inside_the_run():
    assert snapshot_steps([0.1, 0.5], 800) == {0.1: 80, 0.5: 400}
    assert snapshot_steps([0.3], 10) == {0.3: 3}
    assert snapshot_steps([0.1, 0.5, 0.9], 4) == {0.5: 2}  # steps 0 and 4 (the end): none
    assert snapshot_steps([], 100) == {}


def test_snapshot_holds_the_weights_after_its_step(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    with pytest.raises(Interrupted):
        tiny.run(paths, tiny.params(**SNAPSHOT), callbacks=[CrashAfter(5)])
    checkpoint = torch.load(paths.last_checkpoint(tiny.RUN_KEY), weights_only=True)
    assert checkpoint["global_step"] == 4
    snapshot = load_file(paths.snapshot_files(0.5).weights)
    trained = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items()}
    assert snapshot.keys() <= trained.keys()
    assert all(torch.equal(snapshot[k], trained[k]) for k in snapshot)
    assert load_model(paths.snapshot_files(0.5)).cfg == tiny.params().train.model  # loadable
    assert sorted(paths.snapshots()) == [0.5]


def test_a_resumed_run_keeps_the_snapshot_it_passed(tmp_path, tiny):
    straight = tiny.write_tokens(tmp_path / "straight")
    tiny.run(straight, tiny.params(**SNAPSHOT))
    paths = tiny.write_tokens(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        tiny.run(paths, tiny.params(**SNAPSHOT), callbacks=[CrashAfter(5)])
    weights = paths.snapshot_files(0.5).weights
    written = weights.stat().st_mtime_ns, weights.read_bytes()
    resumed = tiny.run(paths, tiny.params(**SNAPSHOT))  # from the step-4 checkpoint
    assert resumed.metrics["steps"] == 8
    assert (weights.stat().st_mtime_ns, weights.read_bytes()) == written  # not rewritten
    # and it holds the weights of an uninterrupted run's snapshot
    kept, expected = load_file(weights), load_file(straight.snapshot_files(0.5).weights)
    assert kept.keys() == expected.keys()
    assert all(torch.equal(kept[k], expected[k]) for k in kept)


def test_a_new_run_starts_with_only_its_own_snapshots(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    stale = paths.snapshot_files(0.25).weights
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"another run's weights")
    tiny.run(paths, tiny.params(max_steps=2, monitor={"snapshot_fractions": []}))
    assert paths.snapshots_dir.is_dir()  # a DVC output: present, if empty
    assert list(paths.snapshots_dir.iterdir()) == []
