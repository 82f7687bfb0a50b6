"""Checkpoints: an interrupted-and-resumed run equals an uninterrupted one; files are atomic and
loaded without pickle; a checkpoint of another model is refused by name."""

from __future__ import annotations

import pickle

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from safetensors.torch import load_file

from pipeline.train.checkpoint_io import (
    AtomicCheckpointIO,
    CheckpointCorruptError,
    CheckpointMismatchError,
)
from pipeline.train.outputs import run_fingerprint

# grad_accum 2 so that a restart must also land on an accumulation boundary.
RESUME = {"max_steps": 8, "micro_batch_size": 2, "grad_accum": 2, "monitor": {"log_every": 1}}


class Interrupted(Exception):
    pass


class CrashAfter(Callback):
    """Kill the run as the first micro-batch after optimizer step ``step`` starts."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Interrupted


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny):
    paths = tiny.write_tokens(tmp_path_factory.mktemp("straight"))
    result = tiny.run(paths, tiny.params(**RESUME))
    return result, load_file(paths.model_files.weights)


@pytest.mark.parametrize(
    "checkpoint_every",
    [4, 3],
    ids=["checkpoint-after-validation", "checkpoint-between-validations"],
)
def test_resumed_run_reproduces_the_uninterrupted_run_exactly(
    tmp_path, tiny, straight, checkpoint_every
):
    expected, expected_weights = straight
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(**RESUME, runtime={"checkpoint_every": checkpoint_every})
    with pytest.raises(Interrupted):
        tiny.run(paths, p, callbacks=[CrashAfter(checkpoint_every + 1)])  # past the checkpoint
    last = paths.last_checkpoint(tiny.RUN_KEY)
    assert torch.load(last, weights_only=True)["global_step"] == checkpoint_every

    resumed = tiny.run(paths, p)  # resume: auto
    assert tiny.losses(resumed)[checkpoint_every:] == tiny.losses(expected)[checkpoint_every:]
    assert resumed.history == expected.history  # restored history + same continuation
    digests = resumed.history["routing_digest"]  # every step's routing, the resumed ones too
    assert [r["step"] for r in digests] == list(range(1, 9))
    assert digests == expected.history["routing_digest"]
    assert resumed.metrics["steps"] == 8
    weights = load_file(paths.model_files.weights)
    assert weights.keys() == expected_weights.keys()
    assert all(torch.equal(weights[k], expected_weights[k]) for k in weights)


def test_resumed_global_balance_run_routes_the_same_step_batches(tmp_path, tiny, straight):
    """balance: global with grad_accum 2: the routing pre-pass finds each step's micro-batches
    by the step number, so after a resume it counts the same windows, and the continuation is
    the uninterrupted run's, bit for bit."""
    p = tiny.params(**RESUME, model={"moe": {"balance": "global"}}, runtime={"checkpoint_every": 4})
    uninterrupted = tiny.run(tiny.write_tokens(tmp_path / "straight"), p)
    paths = tiny.write_tokens(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        tiny.run(paths, p, callbacks=[CrashAfter(5)])
    resumed = tiny.run(paths, p)
    assert resumed.history == uninterrupted.history
    assert tiny.losses(resumed) != tiny.losses(straight[0])  # global is not the micro run


def test_routing_health_window_open_at_the_checkpoint_survives_the_resume(tmp_path, tiny):
    """Checkpoint at step 3, health logged at steps 2, 4, ...: step 4's dead fraction counts
    the loads of steps 3 and 4, and step 3's come back from the checkpoint. A threshold of 0.95 ×
    the mean load makes the fraction depend on every step's counts (0 otherwise, on this run)."""
    geometry = {**RESUME, "monitor": {"log_every": 2, "dead_expert_load": 0.95}}
    p = tiny.params(**geometry, runtime={"checkpoint_every": 3})
    straight = tiny.run(tiny.write_tokens(tmp_path / "straight"), p)
    paths = tiny.write_tokens(tmp_path / "resumed")
    with pytest.raises(Interrupted):
        tiny.run(paths, p, callbacks=[CrashAfter(3)])
    resumed = tiny.run(paths, p)
    assert resumed.history["routing"] == straight.history["routing"]
    assert any(r["dead_fraction"] > 0 for r in straight.history["routing"])


def test_a_run_resumes_under_another_backend(tmp_path, tiny, straight):
    """The backend is a runtime setting: a run checkpointed on ``torch`` resumes on
    ``reference`` (same run fingerprint, same checkpoint) and continues the same curve."""
    expected, expected_weights = straight
    paths = tiny.write_tokens(tmp_path)
    on = {b: tiny.params(**RESUME, runtime={"checkpoint_every": 4, "backend": b})
          for b in ("torch", "reference")}  # fmt: skip
    assert run_fingerprint(on["torch"], "data") == run_fingerprint(on["reference"], "data")
    with pytest.raises(Interrupted):
        tiny.run(paths, on["torch"], callbacks=[CrashAfter(5)])
    resumed = tiny.run(paths, on["reference"])
    assert resumed.metrics["steps"] == 8
    assert tiny.losses(resumed)[:4] == tiny.losses(expected)[:4]  # the torch run's, restored
    # fp32: per-expert loops instead of grouped GEMMs from step 5 on, the same arithmetic in
    # another order; a run that restarted from scratch or lost its optimizer state is off by 1e-2.
    assert tiny.losses(resumed)[4:] == pytest.approx(tiny.losses(expected)[4:], rel=1e-4)
    weights = load_file(paths.model_files.weights)
    for key, value in expected_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=1e-3, atol=1e-5)


def test_rerunning_a_finished_run_trains_nothing_and_reports_the_same(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    first = tiny.run(paths, tiny.params(max_steps=2, runtime={"checkpoint_every": 2}))
    again = tiny.run(
        paths, tiny.params(max_steps=2, runtime={"checkpoint_every": 2})
    )  # resumes at step 2
    assert again.history == first.history
    same = ("train_loss", "val_loss", "tokens_per_s", "mfu", "steps", "params_total")
    assert {k: again.metrics[k] for k in same} == {k: first.metrics[k] for k in same}


def test_checkpoint_holds_sampler_state_and_router_bias_buffers(tmp_path, tiny):
    from pipeline.model import MoETransformer

    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(
        max_steps=2, model={"moe": {"router": "sigmoid_bias"}}, runtime={"checkpoint_every": 2}
    )
    tiny.run(paths, p)
    checkpoint = torch.load(paths.last_checkpoint(tiny.RUN_KEY), weights_only=True)
    assert checkpoint["TokenDataModule"]["sampler"]["position"] == 2 * 4  # 2 steps of 4 windows
    assert checkpoint["optimizer_states"] and checkpoint["lr_schedulers"]
    model = MoETransformer(p.train.model, tiny.VOCAB)
    persistent = {name for name, _ in model.named_buffers()} & set(model.state_dict())
    assert persistent, "a sigmoid_bias router keeps its balancing biases in buffers"
    assert {f"model.{name}" for name in persistent} <= set(checkpoint["state_dict"])


def test_checkpoint_of_another_model_config_is_refused_naming_the_differences(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    tiny.run(paths, tiny.params(max_steps=2, runtime={"checkpoint_every": 2}))
    other = tiny.params(max_steps=4, model={"d_model": 48, "moe": {"num_experts": 8}})
    with pytest.raises(CheckpointMismatchError) as info:
        tiny.run(paths, other)
    message = str(info.value)
    assert "model.d_model: checkpoint 32, params 48" in message
    assert "model.moe.num_experts: checkpoint 4, params 8" in message
    assert "train.runtime.resume: never" in message


def test_resume_never_starts_afresh(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    first = tiny.run(paths, tiny.params(max_steps=2, runtime={"checkpoint_every": 2}))
    again = tiny.run(
        paths, tiny.params(max_steps=2, runtime={"checkpoint_every": 2, "resume": "never"})
    )
    assert tiny.losses(again) == tiny.losses(first)  # trained from step 0 again, same seed


def test_failed_checkpoint_write_leaves_the_previous_file_whole(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        io.save_checkpoint({"step": 2, "bad": lambda: None}, path)  # fails mid-serialisation
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left


class Payload:
    """Any class: unpickling it would run code, which weights_only loading must refuse."""


def test_checkpoints_load_without_unpickling_code(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "evil.ckpt"
    torch.save({"obj": Payload()}, path)
    with pytest.raises(CheckpointCorruptError, match="evil.ckpt: refusing to load"):
        io.load_checkpoint(path)
    with pytest.raises(ValueError, match="refusing weights_only=False"):
        io.load_checkpoint(path, weights_only=False)


@pytest.mark.parametrize("damage", ["flip-a-byte", "truncate"])
def test_damaged_checkpoint_is_refused_naming_the_file(tmp_path, damage):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.randn(256, 256)}, "global_step": 3}, path)
    assert io.load_checkpoint(path)["global_step"] == 3
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # inside the tensor's bytes, which dominate the file
    if damage == "flip-a-byte":
        data[middle] ^= 0xFF
    else:
        del data[middle:]
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match=r"last\.ckpt: .*(digest|truncated)"):
        io.load_checkpoint(path)


def test_checkpoint_without_a_digest_is_refused(tmp_path):
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    with pytest.raises(CheckpointCorruptError, match="has no content digest"):
        AtomicCheckpointIO().load_checkpoint(path)


def test_checkpoint_of_the_unstacked_expert_layout_is_refused_with_the_fix(tmp_path, tiny):
    """Before w13, the experts' gate and up weights were two parameters: their AdamW moments
    cannot be mapped onto one, so the resume is refused instead of failing inside Lightning."""
    paths = tiny.write_tokens(tmp_path)
    tiny.run(paths, tiny.params(max_steps=2, runtime={"checkpoint_every": 2}))
    path = paths.last_checkpoint(tiny.RUN_KEY)
    io = AtomicCheckpointIO()
    checkpoint = io.load_checkpoint(path)
    state = checkpoint["state_dict"]
    for key in [k for k in state if k.endswith(".w13")]:
        gate, up = state.pop(key).chunk(2, dim=1)
        state[key.removesuffix("w13") + "w1"], state[key.removesuffix("w13") + "w3"] = gate, up
    io.save_checkpoint(checkpoint, path)
    with pytest.raises(CheckpointMismatchError, match=r"apart \(w1, w3\).*resume: never"):
        tiny.run(paths, tiny.params(max_steps=4, runtime={"checkpoint_every": 2}))
