"""The evaluate stage end to end on tiny fixtures: outputs with stable keys, MLflow runs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import LOCAL_TASKS, parse_params
from pipeline.errors import PipelineError
from pipeline.io import sha256_file
from pipeline.model_io import model_identity, save_model
from pipeline.paths import Paths
from pipeline.tracking import StageRun, use_experiment
from stages import evaluate

from .conftest import BENCHMARK_ITEMS, TINY_MODEL

PARAMS = {
    "seed": 3,
    "train": {"model": TINY_MODEL, "seq_len": 32},
    "evaluate": {
        "batch_size": 8,
        "perplexity_max_tokens": 128,
        "routing_max_tokens": 64,
        "generation": {"prompts": ["Once upon a time", "Tom had"], "max_new_tokens": 4},
    },
}


@pytest.fixture
def workdir(tmp_path, data_root, model):
    """A copy of the data plus the tiny model exported exactly as the train stage exports it."""
    root = tmp_path / "repo"
    shutil.copytree(data_root, root)
    save_model(model, model_identity(model.cfg, model.vocab_size), Paths(root=root).model_files)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    return root


def stand_in_run(uri: str, stage: str, outputs: dict[str, str], metrics=None) -> str:
    """A finished run of ``stage`` in the test store that wrote ``outputs`` (name -> SHA-256)
    and logged ``metrics``, tagged as the stage tags it: later stages find it by content."""
    client = MlflowClient(uri)
    experiment = use_experiment(client, "test")
    run = StageRun(client.create_run(experiment, tags={"pipeline.stage": stage}).info.run_id,
                   experiment, uri)  # fmt: skip
    run.set_outputs(outputs)
    run.log_metrics(metrics or {})
    client.set_terminated(run.run_id)
    return run.run_id


def stand_in_upstream_runs(root, uri: str) -> str:
    """A finished "train" run that wrote the model (to receive the eval scores)."""
    weights = Paths(root=root).model_files.weights
    return stand_in_run(uri, "train", {"model": sha256_file(weights)})


def test_stage_writes_stable_metrics_and_tracks_runs(workdir, mlflow_uri, monkeypatch):
    train_run = stand_in_upstream_runs(workdir, mlflow_uri)
    monkeypatch.chdir(workdir)
    evaluate.main()

    paths = Paths(root=workdir)
    metrics = json.loads(paths.eval_metrics.read_text())
    for task in LOCAL_TASKS:
        for item_set in ("dev", "test"):
            key = f"{task}/{item_set}"
            assert 0.0 <= metrics[f"{key}/acc"] <= 1.0
            acc, n = metrics[f"{key}/acc"], BENCHMARK_ITEMS  # the harness's sample stderr
            assert metrics[f"{key}/acc_stderr"] == pytest.approx(
                math.sqrt(acc * (1 - acc) / (n - 1))
            )
            assert metrics[f"{key}/n"] == BENCHMARK_ITEMS
            assert 0.0 < metrics[f"{key}/chance"] <= 0.5
    for split in ("validation", "test"):
        assert metrics[f"perplexity/{split}/tokens"] == 128
        assert metrics[f"perplexity/{split}/bits_per_byte"] > 0
        assert metrics[f"perplexity/{split}/ppl"] > 1
    for layer in (0, 1):
        for name in ("entropy", "dropped_fraction", "max_over_mean", "cv"):
            assert f"routing/layer{layer}/{name}" in metrics
    assert metrics["routing/tokens"] == 64

    generations = json.loads(paths.eval_generations.read_text())
    assert [g["prompt"] for g in generations] == ["Once upon a time", "Tom had"]
    for name in ("expert_load.png", "specialisation/layer0.png", "expert_load.csv"):
        assert (paths.eval_plots_dir / name).is_file()

    client = MlflowClient(mlflow_uri)
    eval_run_id = json.loads(paths.eval_run.read_text())["run_id"]
    run = client.get_run(eval_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["pipeline.stage"] == "evaluate"
    assert run.data.tags["upstream.train.run_id"] == train_run
    assert run.data.metrics["agreement/test/acc"] == metrics["agreement/test/acc"]
    assert "plots/expert_load.png" in {a.path for a in client.list_artifacts(eval_run_id, "plots")}
    layers = {a.path for a in client.list_artifacts(eval_run_id, "plots/specialisation")}
    assert layers == {"plots/specialisation/layer0.png", "plots/specialisation/layer1.png"}
    model_run = client.get_run(train_run).data.metrics
    assert model_run["eval/agreement/test/acc"] == metrics["agreement/test/acc"]
    assert model_run["eval/perplexity/test/bits_per_byte"] == pytest.approx(
        metrics["perplexity/test/bits_per_byte"]
    )


def test_hf_model_without_an_export_is_a_clear_error(workdir):
    params = parse_params({**PARAMS, "evaluate": {"model": "hf"}})
    with pytest.raises(
        PipelineError, match=r"models/hf holds no exported model \(run the export stage\)"
    ):
        evaluate.run(params, Paths(root=workdir))


def test_missing_model_names_the_file_and_stage(tmp_path, data_root, mlflow_uri, monkeypatch):
    """``main`` refuses before opening a run; ``run_main`` turns this into exit code 2."""
    root = tmp_path / "repo"
    shutil.copytree(data_root, root)
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    monkeypatch.chdir(root)
    with pytest.raises(PipelineError, match=r"models/model.safetensors: not found \(run the train"):
        evaluate.main()
