"""The prepare and tokenize stages end to end: reproducibility, the same bytes for any number
of workers or shard jobs, MLflow lineage, exit codes, DVC."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline.config import parse_params
from pipeline.data.documents import DataError
from pipeline.data.prepared import read_prepared
from pipeline.data.shards import open_split
from pipeline.data.sources import plan_units
from pipeline.data.synthetic import DOCUMENT_KINDS, generate_documents
from pipeline.paths import SPLITS, Paths
from stages import prepare, tokenize

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "seed": 7,
    "prepare": {"synthetic": {"size_mb": 0.3, "benchmark_items": {"dev": 20, "test": 20}}},
    "tokenize": {"vocab_size": 600},
}


def run_both(root: Path, params: dict = TINY) -> Paths:
    paths = Paths(root=root)
    parsed = parse_params(params)
    prepare.run(parsed, paths)
    tokenize.run(parsed, paths)
    return paths


def output_files(paths: Paths) -> dict[str, bytes]:
    """Every byte the two stages produce, except the metrics and the MLflow run ids in run.json."""
    roots = [paths.prepared_dir, paths.benchmarks_dir, paths.tokenizer_dir, paths.tokens_dir]
    files = sorted(
        p for root in roots for p in root.rglob("*") if p.is_file() and p.name != "run.json"
    )
    return {str(p.relative_to(paths.root)): p.read_bytes() for p in files}


def test_same_params_and_seed_give_byte_identical_outputs(tmp_path):
    first, second = run_both(tmp_path / "a"), run_both(tmp_path / "b")
    first_files, second_files = output_files(first), output_files(second)
    assert first_files.keys() == second_files.keys() and len(first_files) >= 20
    assert [k for k in first_files if first_files[k] != second_files[k]] == []
    # The card stage depends on the metrics: no timings there (they have a file of their own).
    assert first.tokenize_metrics.read_bytes() == second.tokenize_metrics.read_bytes()
    assert json.loads(first.tokenize_timing.read_text())["encode_mb_per_s"] > 0


def test_outputs_are_consistent(tmp_path):
    paths = run_both(tmp_path)
    stats = json.loads(paths.prepare_stats.read_text())
    metrics = json.loads((paths.root / "metrics" / "tokenize.json").read_text())
    for split in SPLITS:
        tokens = open_split(paths.token_split(split))
        prepared = read_prepared(paths.prepared_split(split))
        assert tokens.num_documents == prepared.documents == stats["splits"][split]["documents"]
        assert [s.source_sha256 for s in tokens.shards] == [s.sha256 for s in prepared.shards]
        assert tokens.num_tokens == metrics[split]["tokens"]
        assert metrics[split]["bytes"] == stats["splits"][split]["bytes"] == prepared.bytes
        domains = tokens.document_domains()
        assert len(domains) == tokens.num_documents and set(domains) <= set(DOCUMENT_KINDS)
    assert 2.0 < metrics["train"]["bytes_per_token"] < 8.0
    # The synthetic source labels each document with its kind: the routing analyses' domains.
    assert set(stats["domains"]) == set(DOCUMENT_KINDS)
    assert sum(d["documents"] for d in stats["domains"].values()) == sum(
        stats["splits"][s]["documents"] for s in SPLITS
    )
    assert sum(d["bytes"] for d in stats["domains"].values()) == sum(
        stats["splits"][s]["bytes"] for s in SPLITS
    )
    assert not paths.prepare_staging.exists() and not paths.tokenize_staging.exists()


def write_files_corpus(root: Path) -> None:
    """Synthetic stories as JSONL files in two directories (two domains) and one long .txt."""
    docs = list(generate_documents(3, 0.2, episode_share=0.5))
    for domain, part in (("stories", docs[::2]), ("episodes", docs[1::2])):
        (root / "corpus" / domain).mkdir(parents=True)
        for i in range(4):
            lines = "".join(json.dumps({"text": t}) + "\n" for t in part[i::4])
            (root / "corpus" / domain / f"part-{i}.jsonl").write_text(lines)
    (root / "corpus" / "book").mkdir()
    (root / "corpus" / "book" / "book.txt").write_text("\n\n".join(docs[:200]))


SHARDED = {
    "seed": 7,
    "prepare": {
        "source": "files",
        "files": {"glob": "corpus/**/*.*", "split_txt": "paragraphs", "document_chars": 600},
        "shard_mb": 0.03,  # ~10 units and several shards per split from a 0.25 MB corpus
        "split": {"validation": 0.1, "test": 0.1},
        "synthetic": {"benchmark_items": {"dev": 10, "test": 10}},
    },
    "tokenize": {"vocab_size": 500},
}


def sharded_params(workers: int) -> dict:
    return {
        **SHARDED,
        "prepare": {**SHARDED["prepare"], "num_workers": workers},
        "tokenize": {**SHARDED["tokenize"], "num_workers": workers},
    }


def run_stage(name: str, cwd: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )


def test_workers_and_shard_jobs_write_the_same_bytes(tmp_path, stage_env):
    """One process, two worker processes, and three independent shard jobs per stage followed
    by the merges (as a scheduler would run them): byte-identical outputs."""
    roots = {name: tmp_path / name for name in ("one", "two", "jobs")}
    large = "".join(json.dumps({"text": t}) + "\n" for t in generate_documents(4, 0.1, 0.5))
    for root in roots.values():
        write_files_corpus(root)
        (root / "corpus" / "large").mkdir()
        (root / "corpus" / "large" / "all.jsonl").write_text(large)  # over shard_mb: cut
    one = output_files(run_both(roots["one"], sharded_params(1)))
    two = output_files(run_both(roots["two"], sharded_params(2)))
    jobs = roots["jobs"]
    (jobs / "params.yaml").write_text(yaml.safe_dump(sharded_params(1)))
    commands = [("prepare", f"--shard={i}/3") for i in range(3)] + [("prepare", "--merge")]
    commands += [("tokenize", "--tokenizer")] + [("tokenize", f"--shard={i}/3") for i in range(3)]
    for stage, arg in [*commands, ("tokenize", "--merge")]:
        done = run_stage(stage, jobs, stage_env, arg)
        assert done.returncode == 0, f"{stage} {arg}: {done.stderr[-2000:]}"
    by_jobs = output_files(Paths(root=jobs))
    assert sum(".parquet" in k for k in one) >= 9 and sum(".bin" in k for k in one) >= 9
    assert one.keys() == two.keys() == by_jobs.keys()
    assert [k for k in one if not one[k] == two[k] == by_jobs[k]] == []
    domains = {
        d for s in SPLITS for d in open_split(Paths(root=jobs).token_split(s)).document_domains()
    }
    assert domains == {"stories", "episodes", "book", "large"}
    anchored = prepare.anchored(parse_params(sharded_params(1)), Paths(root=jobs))
    assert sum("bytes" in u.key for u in plan_units(anchored.prepare, 7)) >= 3  # a file was cut


def test_merge_with_a_missing_job_names_the_tasks_and_writes_nothing(tmp_path, stage_env):
    write_files_corpus(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(sharded_params(1)))
    for i in (0, 2):
        assert run_stage("prepare", tmp_path, stage_env, f"--shard={i}/3").returncode == 0
    done = run_stage("prepare", tmp_path, stage_env, "--merge")
    assert done.returncode == 2
    assert "prepare: 2 of 5 tasks are not done" in done.stderr  # 5 units of ~2 files
    assert "tasks 1, 4. Run the shard jobs" in done.stderr
    assert not Paths(root=tmp_path).prepared_split("train").exists()
    assert run_stage("prepare", tmp_path, stage_env, "--shard=1/3").returncode == 0
    assert run_stage("prepare", tmp_path, stage_env, "--merge").returncode == 0


def test_a_cut_jsonl_file_of_blank_lines_is_refused_and_nothing_is_written(tmp_path):
    write_files_corpus(tmp_path)
    (tmp_path / "corpus" / "large").mkdir()
    (tmp_path / "corpus" / "large" / "blank.jsonl").write_text("\n" * 100_000)  # 0.1 MB
    params = parse_params(sharded_params(1))
    paths = Paths(root=tmp_path)
    units = plan_units(prepare.anchored(params, paths).prepare, 7)
    assert sum("blank.jsonl" in u.key["files"][0][0] for u in units if "bytes" in u.key) >= 3
    with pytest.raises(DataError, match=r"blank\.jsonl: holds no document \(an empty shard"):
        prepare.run(params, paths)
    assert not paths.prepared_split("train").exists() and not paths.prepare_staging.exists()


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
    stage_runs = [r for r in runs if r.data.tags.get("pipeline.stage") == "prepare"]
    assert [r.info.status for r in stage_runs] == ["FAILED"]
    parents = [r for r in runs if "pipeline.stage" not in r.data.tags]
    assert [r.info.status for r in parents] == ["FAILED"]


@pytest.fixture
def scratch_repo(make_scratch_repo):
    return make_scratch_repo(TINY)


def test_dvc_repro_reruns_only_what_changed(scratch_repo):
    repo = scratch_repo
    first = repo.dvc("repro", "tokenize")
    assert "Running stage 'prepare'" in first and "Running stage 'tokenize'" in first
    assert (repo.path / "data/tokens/train/manifest.json").exists()
    assert "Running stage" not in repo.dvc("repro", "tokenize")

    params = repo.params()
    params["tokenize"]["vocab_size"] = 500
    repo.set_params(params)
    third = repo.dvc("repro", "tokenize")
    assert "Running stage 'tokenize'" in third and "Running stage 'prepare'" not in third
    assert json.loads((repo.path / "metrics/tokenize.json").read_text())["vocab_size"] <= 500
