"""MLflow tracking: what a stage run records, lineage between runs found by content, the
experiment kind, failure and unreachable store."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import tracking
from pipeline.config import Params


def git_repo_with_one_commit(path) -> str:
    def git(*args):
        return subprocess.run(["git", *args], cwd=path, check=True, capture_output=True, text=True)

    git("init", "-q")
    (path / "f.txt").write_text("x")
    git("add", "f.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    return git("rev-parse", "HEAD").stdout.strip()


def finished_run(stage: str, outputs: dict[str, str], tmp_path) -> str:
    """A finished run of ``stage`` that wrote ``outputs`` (name -> SHA-256), as stages record
    them."""
    with tracking.stage_run(stage, Params(), {}, {}, tmp_path / f"{stage}-run.json") as run:
        run.set_outputs(outputs)
    return run.run_id


def test_stage_run_records_params_tags_metrics_artifacts(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    monkeypatch.chdir(tmp_path)
    commit = git_repo_with_one_commit(tmp_path)
    prepare_run = finished_run("prepare", {"train": "f00d", "test": "beef"}, tmp_path)
    artifact = tmp_path / "stats.json"
    artifact.write_text("{}")
    run_file = tmp_path / "out" / "run.json"
    params = Params()
    inputs = {"train": "f00d", "test": "beef"}
    with tracking.stage_run("tokenize", params, inputs, {"prepare": inputs}, run_file) as run:
        run.log_metrics({"tokens": 123.0, "mb_per_s": 4.5})
        run.log_artifact(artifact, "metrics")

    written = json.loads(run_file.read_text())
    assert written["run_id"] == run.run_id and written["upstream"] == {"prepare": prepare_run}
    got = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "tokenize-exp-abc"
    assert got.data.params["tokenize.vocab_size"] == str(params.tokenize.vocab_size)
    assert got.data.params["prepare.synthetic.size_mb"] == str(params.prepare.synthetic.size_mb)
    assert got.data.metrics == {"tokens": 123.0, "mb_per_s": 4.5}
    tags = got.data.tags
    assert tags["pipeline.stage"] == "tokenize"
    assert tags["input.train.sha256"] == "f00d"
    assert tags["upstream.prepare.run_id"] == prepare_run
    assert tags["dvc.exp_name"] == "exp-abc"
    assert tags["mlflow.source.git.commit"] == commit
    assert tags["git.dirty"] == "false"  # untracked outputs do not make the tree dirty
    artifacts = {a.path for a in MlflowClient(mlflow_uri).list_artifacts(run.run_id, "metrics")}
    assert artifacts == {"metrics/stats.json"}
    freeze = MlflowClient(mlflow_uri).download_artifacts(
        run.run_id, "environment/pip-freeze.txt", str(tmp_path)
    )
    assert "mlflow==" in Path(freeze).read_text()


def test_failed_stage_marks_run_failed_and_writes_no_run_file(mlflow_uri, tmp_path):
    run_file = tmp_path / "run.json"
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.stage_run("prepare", Params(), {}, {}, run_file),
    ):
        raise RuntimeError("boom")
    assert not run_file.exists()
    runs = MlflowClient(mlflow_uri).search_runs(
        [MlflowClient(mlflow_uri).get_experiment_by_name("test").experiment_id]
    )
    assert [r.info.status for r in runs] == ["FAILED"]


def test_unreachable_server_fails_fast_naming_the_uri(monkeypatch, tmp_path):
    uri = "http://127.0.0.1:9"  # discard port: nothing listens
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    start = time.perf_counter()
    unreachable = pytest.raises(tracking.TrackingError, match=r"http://127.0.0.1:9 is unreachable")
    with unreachable, tracking.stage_run("prepare", Params(), {}, {}, tmp_path / "run.json"):
        pass
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "run.json").exists()


def test_default_store_is_the_repo_root_even_inside_a_dvc_temp_copy(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    inner = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run" / "abc"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    assert tracking.tracking_uri() == f"sqlite:///{(tmp_path / 'repo').resolve() / 'mlflow.db'}"


def test_upstream_is_the_newest_finished_run_that_wrote_the_inputs(mlflow_uri, tmp_path, caplog):
    older = finished_run("prepare", {"train": "aa", "test": "bb"}, tmp_path)
    newer = finished_run("prepare", {"train": "aa", "test": "bb"}, tmp_path)  # a re-run, same bytes
    finished_run("prepare", {"train": "aa", "test": "cc"}, tmp_path)  # another test split
    finished_run("tokenize", {"train": "aa", "test": "bb"}, tmp_path)  # another stage
    with (
        pytest.raises(RuntimeError),
        tracking.stage_run("prepare", Params(), {}, {}, tmp_path / "x") as failed,
    ):
        failed.set_outputs({"train": "aa", "test": "bb"})  # the newest, but failed: not upstream
        raise RuntimeError("boom")
    run_file = tmp_path / "run.json"

    inputs = {"train": "aa", "test": "bb", "own": "dd"}
    with tracking.stage_run("tokenize", Params(), inputs, {"prepare": ("train", "test")}, run_file):
        pass
    assert older != newer and json.loads(run_file.read_text())["upstream"] == {"prepare": newer}

    with tracking.stage_run("train", Params(), {"train": "ee"}, {"prepare": ["train"]}, run_file):
        pass
    orphan = json.loads(run_file.read_text())
    assert orphan["upstream"] == {}
    tags = MlflowClient(mlflow_uri).get_run(orphan["run_id"]).data.tags
    assert "upstream.prepare.run_id" not in tags and tags["input.train.sha256"] == "ee"
    assert "no finished prepare run in this MLflow experiment wrote train" in caplog.text


def test_experiment_is_marked_as_model_training_new_or_existing(mlflow_uri, tmp_path, monkeypatch):
    client = MlflowClient(mlflow_uri)
    existing = client.create_experiment("made-before")  # as an older pipeline version left it
    for name in ("made-before", "made-now"):
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", name)
        with tracking.stage_run("prepare", Params(), {}, {}, tmp_path / "run.json") as run:
            pass
        tags = client.get_experiment(run.experiment_id).tags
        assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert client.get_experiment_by_name("made-before").experiment_id == existing
