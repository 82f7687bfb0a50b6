"""MLflow tracking: what a stage run records, lineage between runs found by content, the
experiment kind, failure and unreachable store; the parent run of each pipeline execution (its
key, name, headline params and metrics, the stages it links) and system metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline import executions, tracking
from pipeline.config import Params

REPO = Path(__file__).resolve().parents[1]


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


def test_a_stage_opens_one_mlflow_client(mlflow_uri, tmp_path, monkeypatch):
    import mlflow.tracking

    opened = []

    class CountedClient(MlflowClient):
        def __init__(self, *args, **kwargs):
            opened.append(self)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(mlflow.tracking, "MlflowClient", CountedClient)
    with tracking.stage_run("prepare", Params(), {}, {}, tmp_path / "run.json") as run:
        run.log_metrics({"docs": 1.0})
        run.log_text("hello", "notes/hello.txt")
    assert len(opened) == 1 and run.client is opened[0]


def test_failed_stage_marks_run_and_parent_failed_and_writes_no_run_file(mlflow_uri, tmp_path):
    run_file = tmp_path / "run.json"
    with (
        pytest.raises(RuntimeError, match="boom"),
        tracking.stage_run("prepare", Params(), {}, {}, run_file) as run,
    ):
        raise RuntimeError("boom")
    assert not run_file.exists()
    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("test").experiment_id])
    assert {r.info.run_id: r.info.status for r in runs} == {
        run.run_id: "FAILED",
        run.parent_id: "FAILED",  # DVC stops at a failed stage: so does its execution
    }


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


def test_a_new_experiment_keeps_its_artifacts_in_the_repo_root_not_a_dvc_temp_copy(
    monkeypatch, tmp_path
):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    inner = tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "run" / "abc"
    inner.mkdir(parents=True)
    monkeypatch.chdir(inner)
    client = MlflowClient(tracking.tracking_uri())
    experiment_id = tracking.use_experiment(client, "from-a-temp-copy")
    location = client.get_experiment(experiment_id).artifact_location
    assert location == (tmp_path / "repo").resolve().joinpath("mlruns").as_uri()


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


# --------------------------------------------------------------------------- executions
# A five-stage pipeline wired like the real one by file names: what each stage reads (by the
# upstream stage that writes it) and writes.
READS = {
    "prepare": {},
    "tokenize": {"prepare": ("train",)},
    "train": {"tokenize": ("train_tokens",)},
    "evaluate": {"train": ("model",)},
    "card": {"train": ("model",), "evaluate": ("eval_metrics",)},
}
WRITES = {"prepare": ("train",), "tokenize": ("train_tokens",), "train": ("model",)}
WRITES |= {"evaluate": ("eval_metrics",), "card": ()}
FILES = {"train": "corpus", "train_tokens": "tokens", "model": "weights", "eval_metrics": "scores"}
HEADLINE = {
    "val_loss": 3.0,
    "perplexity/validation/bits_per_byte": 1.25,
    "perplexity/test/bits_per_byte": 1.5,
    "agreement/test/acc": 0.75,
    "agreement/test/above_baseline_stderr": 4.0,
}
NOT_HEADLINE = {  # what else the stages log: stays on the stage runs
    "train_loss": 2.9,
    "tokens_per_s": 1000.0,
    "agreement/dev/acc": 0.5,
    "agreement/test/baseline_best": 0.5,
    "agreement/test/tier/hard/acc": 0.25,
    "routing/layer0/entropy": 1.0,
}
METRICS = {
    "train": {"val_loss": HEADLINE["val_loss"], "train_loss": 2.9, "tokens_per_s": 1000.0},
    "evaluate": {k: v for k, v in {**HEADLINE, **NOT_HEADLINE}.items() if "/" in k},
}


def execute(tmp_path, stages, params=None, files=FILES, metrics=METRICS) -> dict:
    """Run ``stages`` in order in this process, as one execution of the pipeline would:
    each reads ``files`` (name -> digest) and writes its own, logging ``metrics``."""
    runs = {}
    for stage in stages:
        upstream = READS[stage]
        inputs = {name: files[name] for names in upstream.values() for name in names}
        run_file = tmp_path / f"{stage}-run.json"
        with tracking.stage_run(stage, params or Params(), inputs, upstream, run_file) as run:
            run.log_metrics(metrics.get(stage, {}))
            run.set_outputs({name: files[name] for name in WRITES[stage]})
        runs[stage] = run
    return runs


def parent_of(runs: dict, client):
    (parent_id,) = {run.parent_id for run in runs.values()}
    return client.get_run(parent_id)


def runs_of(client, stage: str) -> list[str]:
    experiment = client.get_experiment_by_name("test").experiment_id
    return [
        r.info.run_id
        for r in client.search_runs([experiment], f"tags.`pipeline.stage` = '{stage}'")
    ]


def links(parent) -> dict[str, str]:
    tags = parent.data.tags
    return {k.split(".")[1]: v for k, v in tags.items() if k.startswith("stage.")}


def variant(**moe) -> Params:
    return Params.model_validate({"train": {"model": {"moe": moe}}})


def test_stages_of_one_execution_share_one_parent_that_links_them(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    runs = execute(tmp_path, READS)
    parent = parent_of(runs, client)
    assert parent.info.run_name == "defaults" and parent.info.status == "FINISHED"
    assert links(parent) == {stage: run.run_id for stage, run in runs.items()}
    for run in runs.values():
        assert client.get_run(run.run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    tags = parent.data.tags
    assert "pipeline.stage" not in tags  # a stage's lineage search never finds a parent
    assert tags["pipeline.execution"].startswith("params:")  # by hand: no DVC process above
    assert tags["pipeline.params_digest"] == executions.params_digest(Params())
    flat = executions.flat_params(Params())
    assert parent.data.params == {key: str(flat[key]) for key in executions.HEADLINE_PARAMS}
    assert json.loads((tmp_path / "card-run.json").read_text())["parent_run_id"] == (
        parent.info.run_id
    )


def test_parent_runs_while_a_stage_runs_and_ends_as_the_last_stage_did(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    with tracking.stage_run("prepare", Params(), {}, {}, tmp_path / "run.json") as run:
        assert client.get_run(run.parent_id).info.status == "RUNNING"
    assert client.get_run(run.parent_id).info.status == "FINISHED"  # prepare ran last
    with (
        pytest.raises(RuntimeError),
        tracking.stage_run("tokenize", Params(), {}, {}, tmp_path / "run.json") as failed,
    ):
        raise RuntimeError("boom")
    assert failed.parent_id == run.parent_id
    assert client.get_run(run.parent_id).info.status == "FAILED"
    # By hand (no DVC process), a re-run with the same params and commit joins that parent.
    again = execute(tmp_path, ["tokenize"], files={"train": "x", "train_tokens": "y"})
    assert again["tokenize"].parent_id == run.parent_id
    assert client.get_run(run.parent_id).info.status == "FINISHED"


def test_other_params_make_another_parent_named_by_what_differs(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    default = execute(tmp_path, ["prepare"])["prepare"]
    params = variant(num_experts=2, router="sigmoid_bias")
    other = execute(tmp_path, ["prepare"], params)["prepare"]
    assert other.parent_id != default.parent_id
    parent = client.get_run(other.parent_id)
    assert parent.info.run_name == "num_experts=2,router=sigmoid_bias"
    assert parent.data.params["train.model.moe.num_experts"] == "2"
    assert "router=sigmoid_bias" in parent.data.tags["mlflow.note.content"]


def test_dvc_exp_name_names_the_parent(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_EXP_NAME", "four-to-two")
    runs = execute(tmp_path, ["prepare", "tokenize"], variant(num_experts=2))
    parent = parent_of(runs, MlflowClient(mlflow_uri))
    assert parent.info.run_name == "four-to-two"
    assert parent.data.tags["dvc.exp_name"] == "four-to-two"


def test_headline_metrics_reach_the_parent_and_the_rest_stays_on_the_stage(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    runs = execute(tmp_path, ["prepare", "tokenize", "train", "evaluate"])
    assert parent_of(runs, client).data.metrics == HEADLINE
    evaluated = client.get_run(runs["evaluate"].run_id).data.metrics
    assert evaluated["agreement/dev/acc"] == NOT_HEADLINE["agreement/dev/acc"]


def test_upstream_stages_dvc_skipped_are_linked_not_rerun(mlflow_uri, tmp_path):
    client = MlflowClient(mlflow_uri)
    first = execute(tmp_path, READS)
    # Fewer experts: DVC skips prepare and tokenize (same params for them, same files).
    files = {**FILES, "model": "weights-2", "eval_metrics": "scores-2"}
    trained = {**METRICS, "train": {"val_loss": 2.0}}
    second = execute(
        tmp_path, ["train", "evaluate", "card"], variant(num_experts=2), files, trained
    )
    parent = parent_of(second, client)
    assert parent.info.run_id != first["card"].parent_id
    assert links(parent) == {
        "prepare": first["prepare"].run_id,
        "tokenize": first["tokenize"].run_id,
        **{stage: run.run_id for stage, run in second.items()},
    }
    assert len(runs_of(client, "prepare")) == len(runs_of(client, "tokenize")) == 1
    assert parent.data.metrics["val_loss"] == 2.0
    # Another task list: DVC runs evaluate and the card only; train's score comes to the parent.
    params = Params.model_validate(
        {"train": {"model": {"moe": {"num_experts": 2}}}, "evaluate": {"tasks": ["agreement"]}}
    )
    third = execute(tmp_path, ["evaluate", "card"], params, files, {})
    parent = parent_of(third, client)
    assert links(parent)["train"] == second["train"].run_id
    assert links(parent)["prepare"] == first["prepare"].run_id
    assert parent.data.metrics == {"val_loss": 2.0}
    assert parent.info.status == "FINISHED"


def test_downstream_stages_dvc_skipped_are_linked_with_their_metrics(
    mlflow_uri, tmp_path, monkeypatch
):
    client = MlflowClient(mlflow_uri)
    first = execute(tmp_path, READS)
    # Newer, and on the same corpus, but made with other params: not this variant's tokens.
    other = Params.model_validate({"tokenize": {"vocab_size": 500}})
    execute(tmp_path, ["tokenize"], other, {**FILES, "train_tokens": "tokens-500"})
    # Another execution with the same params (a second dvc repro after a comment-only change):
    # prepare re-runs and writes the same bytes, DVC skips the rest.
    monkeypatch.setenv("DVC_EXP_NAME", "again")
    rerun = execute(tmp_path, ["prepare"])
    parent = parent_of(rerun, client)
    assert parent.info.run_id != first["card"].parent_id
    expected = {stage: run.run_id for stage, run in first.items()}
    assert links(parent) == {**expected, "prepare": rerun["prepare"].run_id}
    assert parent.data.metrics == HEADLINE
    assert parent.info.status == "FINISHED"
    assert len(runs_of(client, "train")) == 1


def test_execution_key_is_the_dvc_process_running_the_stage_commands(tmp_path):
    """A stand-in for DVC starts two stage commands with DVC_STAGE set, one directly and one
    through a shell (as DVC does); both find it, another stand-in is another execution, and a
    command without DVC_STAGE is keyed by its params."""
    key = "from pipeline.executions import execution_key; print(execution_key('digest', {}))"
    launcher = """
import json, os, shlex, subprocess, sys
stage = [sys.executable, "-c", sys.argv[1]]
env = {**os.environ, "DVC_STAGE": "train"}
direct = subprocess.run(stage, env=env, capture_output=True, text=True, check=True)
shell = ["sh", "-c", shlex.join(stage) + "; true"]  # '; true': the shell stays in between
shelled = subprocess.run(shell, env=env, capture_output=True, text=True, check=True)
print(json.dumps([os.getpid(), direct.stdout.strip(), shelled.stdout.strip()]))
"""
    env = {k: v for k, v in os.environ.items() if k != "DVC_STAGE"}
    env["PYTHONPATH"] = str(REPO)

    def python(*args: str) -> str:
        done = subprocess.run([sys.executable, *args], env=env, cwd=tmp_path,
                              capture_output=True, text=True, check=True)  # fmt: skip
        return done.stdout

    pid, direct, shelled = json.loads(python("-c", launcher, key))
    assert direct == shelled and direct.startswith("dvc:") and f":{pid}:" in direct
    assert json.loads(python("-c", launcher, key))[1] != direct  # another DVC process
    assert python("-c", key).startswith("params:")


def test_the_shipped_params_are_the_defaults_so_the_default_pipeline_is_named_defaults():
    from pipeline.config import load_params

    shipped = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert executions.differing_params(shipped) == {}
    assert executions.variant_name(executions.differing_params(shipped)) == "defaults"


def test_variant_name_shortens_keys_unambiguously_and_caps_the_length():
    def variant_name(params: Params) -> str:
        return executions.variant_name(executions.differing_params(params))

    assert variant_name(Params()) == "defaults"
    params = Params.model_validate(
        {"train": {"model": {"moe": {"top_k": 1}}}, "evaluate": {"generation": {"top_k": 5}}}
    )
    assert variant_name(params) == "moe.top_k=1,generation.top_k=5"  # headline first
    tasks = Params.model_validate({"evaluate": {"tasks": ["agreement", "counting"]}})
    assert variant_name(tasks) == "tasks=[agreement,counting]"
    many = Params.model_validate(
        {"evaluate": {"generation": {"prompts": [f"prompt number {i}" for i in range(9)]}},
         "train": {"max_steps": 7, "optim": {"lr": 0.5}}}
    )  # fmt: skip
    name = variant_name(many)
    assert name == "max_steps=7,+2" and len(name) <= executions.RUN_NAME_LIMIT


def test_headline_params_are_params():
    assert set(executions.HEADLINE_PARAMS) <= set(executions.flat_params(Params()))


def test_system_metrics_are_logged_while_the_block_runs(mlflow_uri, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", raising=False)
    with tracking.stage_run("train", Params(), {}, {}, tmp_path / "run.json") as run:
        with run.system_metrics(interval_s=0.2):
            time.sleep(1.5)  # several intervals: at least one is complete and logged
        got = run.client.get_run(run.run_id).data.metrics
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(got)
    history = run.client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and all(0 <= m.value <= 100 for m in history)
