"""MLflow tracking: what a stage run records, lineage between runs, failure and unreachable store."""

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


def test_stage_run_records_params_tags_metrics_artifacts(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "exp-abc")
    monkeypatch.chdir(tmp_path)
    commit = git_repo_with_one_commit(tmp_path)
    upstream_file = tmp_path / "up.json"
    upstream_file.write_text(json.dumps({"run_id": "0123abcd"}))
    artifact = tmp_path / "stats.json"
    artifact.write_text("{}")
    run_file = tmp_path / "out" / "run.json"
    params = Params()
    with tracking.stage_run(
        "tokenize", params, {"train": "f00d"}, {"prepare": upstream_file}, run_file
    ) as run:
        run.log_metrics({"tokens": 123.0, "mb_per_s": 4.5})
        run.log_artifact(artifact, "metrics")

    written = json.loads(run_file.read_text())
    assert written["run_id"] == run.run_id and written["upstream"] == {"prepare": "0123abcd"}
    got = MlflowClient(mlflow_uri).get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "tokenize-exp-abc"
    assert got.data.params["tokenize.vocab_size"] == str(params.tokenize.vocab_size)
    assert got.data.params["prepare.synthetic.size_mb"] == str(params.prepare.synthetic.size_mb)
    assert got.data.metrics == {"tokens": 123.0, "mb_per_s": 4.5}
    tags = got.data.tags
    assert tags["pipeline.stage"] == "tokenize"
    assert tags["input.train.sha256"] == "f00d"
    assert tags["upstream.prepare.run_id"] == "0123abcd"
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
