"""Faults during training: a non-finite loss stops the run at once, naming the step, keeping the
last good checkpoint, and marking the MLflow run failed."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import MLFlowLogger
from mlflow.tracking import MlflowClient

from pipeline.tracking import stage_run
from pipeline.train.callbacks import NonFiniteLossError
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
