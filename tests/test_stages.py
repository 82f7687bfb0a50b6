"""The prepare and tokenize stages end to end: reproducibility, MLflow lineage, exit codes, DVC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import parse_params
from pipeline.paths import SPLITS, Paths
from stages import prepare, tokenize

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "seed": 7,
    "prepare": {"synthetic": {"size_mb": 0.3, "benchmark_items": 20}},
    "tokenize": {"vocab_size": 600},
}


def run_both(root: Path) -> Paths:
    paths = Paths(root=root)
    params = parse_params(TINY)
    prepare.run(params, paths)
    tokenize.run(params, paths)
    return paths


def output_files(paths: Paths) -> dict[str, bytes]:
    """Every byte the two stages produce, except timings (throughput differs run to run)."""
    files = [paths.parquet(s) for s in SPLITS] + [paths.prepare_stats]
    files += sorted(paths.benchmarks_dir.iterdir()) + sorted(paths.tokenizer_dir.iterdir())
    files += [p for s in SPLITS for p in (paths.tokens(s), paths.tokens(s).with_suffix(".json"))]
    return {str(p.relative_to(paths.root)): p.read_bytes() for p in files}


def test_same_params_and_seed_give_byte_identical_outputs(tmp_path):
    first = output_files(run_both(tmp_path / "a"))
    second = output_files(run_both(tmp_path / "b"))
    assert first.keys() == second.keys() and len(first) >= 14
    assert [k for k in first if first[k] != second[k]] == []


def test_outputs_are_consistent(tmp_path):
    paths = run_both(tmp_path)
    stats = json.loads(paths.prepare_stats.read_text())
    metrics = json.loads((paths.root / "metrics" / "tokenize.json").read_text())
    for split in SPLITS:
        header = json.loads(paths.tokens(split).with_suffix(".json").read_text())
        assert header["num_documents"] == stats["splits"][split]["documents"]
        assert header["num_tokens"] == metrics[split]["tokens"]
        assert metrics[split]["bytes"] == stats["splits"][split]["bytes"]
    assert 2.0 < metrics["train"]["bytes_per_token"] < 8.0
    tasks = {p.stem for p in paths.benchmarks_dir.glob("*.jsonl")}
    assert tasks == {"agreement", "entity_cloze", "counting"}


def run_stage(name: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}"], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_stage_commands_track_lineage_in_mlflow(tmp_path, mlflow_uri, stage_env):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))

    for stage in ("prepare", "tokenize"):
        done = run_stage(stage, tmp_path, stage_env)
        assert done.returncode == 0, done.stderr[-2000:]
    prepare_run = json.loads((tmp_path / "data/prepared/run.json").read_text())["run_id"]
    tokenize_run = json.loads((tmp_path / "data/tokens/run.json").read_text())["run_id"]
    client = MlflowClient(mlflow_uri)
    run = client.get_run(tokenize_run)
    assert run.info.status == "FINISHED"
    assert run.data.tags["upstream.prepare.run_id"] == prepare_run
    stats = json.loads((tmp_path / "data/prepared/stats.json").read_text())
    assert run.data.tags["input.train.sha256"] == stats["splits"]["train"]["sha256"]
    assert run.data.metrics["train_tokens"] > 0
    assert {a.path for a in client.list_artifacts(tokenize_run, "tokenizer")} == {
        "tokenizer/tokenizer.json"
    }
    assert (
        client.get_run(prepare_run).data.tags["output.train.sha256"]
        == stats["splits"]["train"]["sha256"]
    )


def test_bad_params_exit_2_before_writing_anything(tmp_path, stage_env):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"prepare": {"sorce": "files"}}))
    done = run_stage("prepare", tmp_path, stage_env)
    assert done.returncode == 2
    assert "unknown key 'prepare.sorce'" in done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db", "params.yaml"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["params.yaml"]


def test_bad_input_file_exits_2_and_marks_the_run_failed(tmp_path, mlflow_uri, stage_env):
    (tmp_path / "bad.txt").write_bytes(b"ok \xff\xfe bytes")
    params = {"prepare": {"source": "files", "files": {"glob": "bad.txt"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = run_stage("prepare", tmp_path, stage_env)
    assert done.returncode == 2
    assert "bad.txt: invalid UTF-8 at byte offset 3" in done.stderr
    assert not (tmp_path / "data" / "prepared").exists() or not any(
        (tmp_path / "data" / "prepared").iterdir()
    )
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.fixture
def scratch_repo(make_scratch_repo):
    return make_scratch_repo(TINY)


def test_dvc_repro_reruns_only_what_changed(scratch_repo):
    repo = scratch_repo
    first = repo.dvc("repro", "tokenize")
    assert "Running stage 'prepare'" in first and "Running stage 'tokenize'" in first
    assert (repo.path / "data/tokens/train.bin").exists()
    assert "Running stage" not in repo.dvc("repro", "tokenize")

    params = repo.params()
    params["tokenize"]["vocab_size"] = 500
    repo.set_params(params)
    third = repo.dvc("repro", "tokenize")
    assert "Running stage 'tokenize'" in third and "Running stage 'prepare'" not in third
    assert json.loads((repo.path / "metrics/tokenize.json").read_text())["vocab_size"] <= 500
