"""Faults during training: a non-finite loss stops the run before that step's update, naming the
step, keeping the last good checkpoint, and marking the MLflow run failed; a non-finite gradient
with a finite loss stops it too, or skips the step (``train.runtime.nonfinite_grad``)."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from pipeline.tracking import stage_run
from pipeline.train.callbacks import (
    NonFiniteGradientError,
    NonFiniteLossError,
    NonFiniteLossGuard,
)
from pipeline.train.trainer import train


class PoisonWeights(Callback):
    """Fill the token embedding with ``value`` as the micro-batch of step ``step`` starts."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step + 1 == self.step:
            with torch.no_grad():
                pl_module.model.embed.weight.fill_(self.value)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_non_finite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny, value
):
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(
        max_steps=8, runtime={"checkpoint_every": 2}, monitor={"val_every": 100, "log_every": 1}
    )
    with pytest.raises(NonFiniteLossError, match=r"at step 5 .*last good checkpoint .*step 4\)"):
        tiny.run(paths, p, callbacks=[PoisonWeights(step=5, value=value)])

    saved = torch.load(paths.last_checkpoint(tiny.RUN_KEY), weights_only=True)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert not paths.model_files.weights.exists()  # nothing exported from a failed run


def test_non_finite_loss_marks_the_mlflow_run_failed(tmp_path, tiny, mlflow_uri, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(
        max_steps=4, runtime={"checkpoint_every": 2}, monitor={"val_every": 100, "log_every": 1}
    )
    poison = PoisonWeights(step=3, value=math.nan)
    with (
        pytest.raises(NonFiniteLossError),
        stage_run("train", p, {}, {}, tmp_path / "run.json") as tracked,
    ):
        logger = MLFlowLogger(tracking_uri=mlflow_uri, run_id=tracked.run_id)
        train(p, paths, tiny.RUN_KEY, logger, progress_bar=False, extra_callbacks=[poison])

    client = MlflowClient(mlflow_uri)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(tracked.run_id, "train/loss")] == [1, 2]


class PoisonGradient(Callback):
    """Set one gradient entry to inf after the backward of step ``step``'s micro-batches: the
    loss stays finite, as in a bf16 overflow inside the backward."""

    def __init__(self, step: int):
        self.step = step

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step + 1 == self.step:
            pl_module.model.blocks[0].attn.q_proj.weight.grad[0, 0] = math.inf


class WeightsAtStepStart(Callback):
    """A copy of one weight matrix as each step starts (keyed by the step about to run)."""

    def __init__(self):
        self.seen: dict[int, torch.Tensor] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen[trainer.global_step + 1] = pl_module.model.blocks[0].attn.q_proj.weight.clone()


def test_non_finite_gradient_with_a_finite_loss_stops_by_default(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(max_steps=8, runtime={"checkpoint_every": 2}, monitor={"val_every": 100})
    with pytest.raises(
        NonFiniteGradientError,
        match=r"gradient norm is not finite at step 5 while the loss is \(\d.*"
        r"last good checkpoint .*step 4\).*nonfinite_grad: skip",
    ):
        tiny.run(paths, p, callbacks=[PoisonGradient(step=5)])
    saved = torch.load(paths.last_checkpoint(tiny.RUN_KEY), weights_only=True)
    assert saved["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())
    assert not paths.model_files.weights.exists()


def test_non_finite_gradient_skips_the_step_when_asked(tmp_path, tiny, caplog):
    """The poisoned step leaves the weights and AdamW's state as they were; the run goes on."""
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(max_steps=6, runtime={"nonfinite_grad": "skip"}, monitor={"val_every": 100})
    weights = WeightsAtStepStart()
    with caplog.at_level(logging.WARNING, logger="pipeline.train.callbacks"):
        result = tiny.run(paths, p, callbacks=[PoisonGradient(step=3), weights])
    assert result.metrics["steps"] == 6
    assert "the gradient is not finite at step 3 (the loss is); the step is skipped" in caplog.text
    seen = weights.seen
    assert torch.equal(seen[3], seen[4])  # step 3 skipped
    assert not torch.equal(seen[2], seen[3]) and not torch.equal(seen[4], seen[5])
    saved = torch.load(paths.last_checkpoint(tiny.RUN_KEY), weights_only=True)
    adam_steps = {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert adam_steps == {5.0}  # 6 optimizer steps, one skipped
    assert all(torch.isfinite(t).all() for t in saved["state_dict"].values())


def test_the_loss_is_checked_once_per_optimizer_step_not_per_micro_batch():
    """A micro-batch's loss is only kept on the device (no host sync, no decision): the check
    happens before the optimizer step (the tests above), once for all its micro-batches."""
    guard = NonFiniteLossGuard(Path("unused"))
    for loss in (torch.tensor(2.0), torch.tensor(math.nan)):
        guard.on_before_backward(trainer=None, pl_module=None, loss=loss)  # needs no trainer
    assert len(guard._losses) == 2
