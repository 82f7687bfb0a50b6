"""DCP checkpoint directories are published atomically: a killed save leaves the previous
complete ``last.ckpt/`` (or, killed between the two renames, that one aside, which resume finds),
never a partial one under the final name."""

from __future__ import annotations

import json

import pytest
import torch

from pipeline.parallel.dcp import (
    METADATA_FILE,
    consolidate,
    existing_checkpoint,
    previous_dir,
    publish,
    staging_dir,
)
from pipeline.paths import Paths


def fake_checkpoint(path, text: str):
    path.mkdir(parents=True)
    (path / "shard").write_text(text)
    return path


def test_publish_replaces_the_previous_checkpoint_and_leaves_nothing_beside(tmp_path):
    target = fake_checkpoint(tmp_path / "last.ckpt", "old")
    publish(fake_checkpoint(staging_dir(target), "new"), target)
    assert (target / "shard").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_a_kill_between_the_renames_leaves_the_previous_checkpoint_to_resume_from(tmp_path):
    target = tmp_path / "last.ckpt"
    assert existing_checkpoint(target) is None
    fake_checkpoint(previous_dir(target), "old")  # publish's first rename done, not its second
    fake_checkpoint(staging_dir(target), "new")
    assert existing_checkpoint(target) == previous_dir(target)
    publish(staging_dir(target), target)  # the next save cleans up
    assert existing_checkpoint(target) == target
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


@pytest.mark.multiprocess
def test_killed_save_keeps_the_previous_last_checkpoint_and_the_run_resumes(
    launcher, tiny, tmp_path
):
    """One model-parallel process (DCP checkpoints), killed by SIGKILL after the tensors of the
    step-4 ``last.ckpt`` are written and before its ``meta.pt``: ``last.ckpt/`` still holds
    exactly the step-2 checkpoint (weights and optimizer state of a run stopped cleanly at step
    2), and the rerun resumes from it to the end."""
    killed, stopped = tmp_path / "killed", tmp_path / "stopped"
    args = ["1", "4", "model_parallel", json.dumps({}), "6"]
    for root in (killed, stopped):
        tiny.write_tokens(root)
    launcher.lightning_train(stopped, tmp_path / "stopped.json", [*args, "2"])
    launcher.lightning_train(killed, tmp_path / "killed.json", [*args, "0", "2"], returncode=-9)
    last = Paths(root=killed).last_checkpoint(tiny.RUN_KEY)
    partial = staging_dir(last)
    assert partial.is_dir() and not (partial / METADATA_FILE).exists()  # the kill hit mid-save
    meta = torch.load(last / METADATA_FILE, map_location="cpu", weights_only=True)
    assert meta["global_step"] == 2
    got, want = (
        consolidate(Paths(root=r).last_checkpoint(tiny.RUN_KEY)) for r in (killed, stopped)
    )
    assert got.keys() == want.keys() == {"state_dict", "optimizer_0"}
    torch.testing.assert_close(got["state_dict"], want["state_dict"], rtol=0, atol=0)
    got_opt, want_opt = got["optimizer_0"], want["optimizer_0"]
    torch.testing.assert_close(got_opt["state"], want_opt["state"], rtol=0, atol=0)
    assert got_opt["param_groups"] == want_opt["param_groups"]

    resumed = launcher.lightning_train(killed, tmp_path / "killed.json", args)
    assert [row["step"] for row in resumed["history"]["train"]] == list(range(1, 7))
    assert resumed["metrics"]["steps"] == 6
    assert not partial.exists()
