"""Upcycled training runs (train.init): a run starts from the dense model's function, a resumed
run never reads the dense model again, the run fingerprint follows the dense weights, and the
stage's MLflow run names the dense model, its weights' SHA-256 and the run that trained it."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from mlflow.tracking import MlflowClient

from pipeline.config import ConfigError
from pipeline.io import read_json, sha256_file
from pipeline.model import MoETransformer
from pipeline.model_io import load_model, model_identity, save_model
from pipeline.paths import ModelFiles
from pipeline.tracking import stage_run
from pipeline.train.module import token_cross_entropy
from pipeline.train.outputs import run_fingerprint
from pipeline.train.upcycle import dense_source
from stages import train as train_stage

HIDDEN = 64  # the tiny model's dense_hidden; the experts take the same width to be copies


class FirstBatch(Callback):
    """Keeps the first training micro-batch."""

    batch = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.batch is None:
            self.batch = [t.clone() for t in batch]


def save_dense(tiny, directory) -> ModelFiles:
    """A dense tiny model (every layer a dense MLP) as the train stage writes it; init_std 0.3
    so that its loss is far from the uniform log(V) a fresh model starts at."""
    cfg = tiny.params(model={"first_dense_layers": 2, "init_std": 0.3}).train.model
    torch.manual_seed(11)
    files = ModelFiles.in_dir(directory)
    directory.mkdir(parents=True)
    save_model(MoETransformer(cfg, tiny.VOCAB), model_identity(cfg, tiny.VOCAB), files)
    return files


def upcycling(tiny, directory, **init):
    return {
        "model": {"moe": {"expert_hidden": HIDDEN}},
        "init": {"upcycle_from": str(directory), **init},
    }


def test_an_upcycled_run_starts_from_the_dense_loss_and_a_resumed_one_ignores_the_dense_model(
    tmp_path, tiny
):
    files = save_dense(tiny, tmp_path / "dense")
    paths = tiny.write_tokens(tmp_path / "run")
    first = FirstBatch()
    p = tiny.params(
        **upcycling(tiny, files.weights.parent), max_steps=2, runtime={"checkpoint_every": 2}
    )
    result = tiny.run(paths, p, callbacks=[first])

    inputs_BL, targets_BL = first.batch
    dense_ce = token_cross_entropy(load_model(files)(inputs_BL).logits, targets_BL).item()
    assert abs(dense_ce - math.log(tiny.VOCAB)) > 0.1  # the dense weights decide this loss
    # fp32: routed experts (grouped GEMMs, renormalised weights) against nn.Linear: ~1e-6.
    assert tiny.losses(result)[0] == pytest.approx(dense_ce, rel=1e-5)

    shutil.rmtree(files.weights.parent)  # a resumed run must not need it
    resumed = tiny.run(paths, tiny.params(**upcycling(tiny, files.weights.parent), max_steps=3))
    assert resumed.metrics["steps"] == 3
    assert tiny.losses(resumed)[:2] == tiny.losses(result)


def test_the_run_fingerprint_follows_the_dense_weights(tmp_path, tiny):
    scratch = run_fingerprint(tiny.params(), "data")
    # From scratch, the upcycling settings mean nothing: the fingerprint ignores them.
    assert run_fingerprint(tiny.params(init={"router_init": "zeros"}), "data") == scratch
    upcycled = tiny.params(**upcycling(tiny, "dense"))
    key = run_fingerprint(upcycled, "data", "sha-a")
    assert key != scratch
    others = {
        run_fingerprint(upcycled, "data", "sha-b"),
        run_fingerprint(tiny.params(**upcycling(tiny, "other")), "data", "sha-a"),
        run_fingerprint(tiny.params(**upcycling(tiny, "dense", method="drop")), "data", "sha-a"),
    }
    assert key not in others and len(others) == 3
    with pytest.raises(ValueError, match="dense_weights_sha256 is required when"):
        run_fingerprint(upcycled, "data")


def test_a_missing_dense_model_is_refused_naming_the_param_and_the_file(tmp_path, tiny):
    files = save_dense(tiny, tmp_path / "dense")
    files.weights.unlink()
    p = tiny.params(**upcycling(tiny, tmp_path / "dense"))
    with pytest.raises(ConfigError, match=r"train\.init\.upcycle_from = .*: no model\.safetensors"):
        dense_source(p.train.init)


def test_drop_without_a_dense_model_is_refused(tiny):
    with pytest.raises(ConfigError, match=r"train\.init: train\.init\.method = 'drop'.*null"):
        tiny.params(init={"method": "drop"})
    with pytest.raises(ConfigError, match=r"train\.init\.drop_ratio = 1\.5"):
        tiny.params(init={"upcycle_from": "d", "method": "drop", "drop_ratio": 1.5})


def test_the_stage_tags_the_dense_model_its_weights_and_its_run(
    tmp_path, tiny, mlflow_uri, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the stage reads ./params.yaml and writes under ./
    files = save_dense(tiny, tmp_path / "dense")
    dense_sha = sha256_file(files.weights)
    with stage_run("train", tiny.params(), {}, {}, tmp_path / "dense_run.json") as dense_run:
        dense_run.set_outputs({"model": dense_sha})  # as the dense model's train stage did
    tiny.write_tokens(tmp_path)
    params = tiny.merge(tiny.TINY, {"train": {**upcycling(tiny, "dense"), "max_steps": 1}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    train_stage.main()

    run_id = read_json(tmp_path / "models" / "run.json")["run_id"]
    tags = MlflowClient(mlflow_uri).get_run(run_id).data.tags
    assert tags["upcycle.from"] == "dense"
    assert tags["upcycle.weights_sha256"] == tags["input.model.sha256"] == dense_sha
    assert tags["upstream.train.run_id"] == dense_run.run_id
