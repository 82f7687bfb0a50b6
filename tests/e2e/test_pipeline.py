"""The whole pipeline as users run it, built once for the module (``pipeline_workspace``):
``dvc repro`` of every stage on tiny params, re-running only what changed with the MLflow lineage
found by content, a variant through ``dvc exp run`` tracked in a live MLflow server, both
variants compared in MLflow's UI (headless Chromium) and with ``dvc plots diff``, and the team
workflow through a DVC remote and a shared git remote."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

STAGES = ("prepare", "tokenize", "train", "export", "evaluate", "card")
EXPERIMENT = "e2e"
VARIANT = "four-to-two"  # the `dvc exp run` variant: other tokens and fewer experts
EXPERTS_PARAM = "train.model.moe.num_experts"
VARIANT_SETS = ("tokenize.vocab_size=500", f"{EXPERTS_PARAM}=2")  # the baseline: 600 and 4
# The training runs of the baseline and of the variant, by the name a person finds them under
# (pipeline/tracking.py: `<stage>` or `<stage>-<dvc exp name>`), with the experts each trained.
TRAIN_RUN_NAMES = {"train": "4", f"train-{VARIANT}": "2"}
TRAIN_RUNS_FILTER = urllib.parse.quote("tags.`pipeline.stage` = 'train'")  # runs page search
# `MOE_SCREENSHOT_DIR=docs/img pytest tests/e2e/test_pipeline.py -k mlflow_ui` refreshes the
# README's screenshot, this page of the browser test.
README_SCREENSHOT = "mlflow-compare-variants"


@dataclass
class PipelineWorkspace:
    """The scratch repository after the steps of :func:`pipeline_workspace`, what each step
    printed (``out``) and the experiment's MLflow runs after it (``runs``), keyed by step."""

    repo: object  # tests/conftest.py's ScratchRepo
    mlflow_uri: str
    experiment: dict  # as experiments/get-by-name returns it
    out: dict[str, str]
    runs: dict[str, list[dict]]
    baseline_eval: dict  # metrics/eval.json after the baseline run


@pytest.fixture(scope="module")
def pipeline_workspace(
    tmp_path_factory, scratch_repo_at, tiny_pipeline, mlflow_server, mlflow_rest
) -> PipelineWorkspace:
    """The tiny pipeline as a team runs it, against a live MLflow server, once for this module:

    1. ``baseline``: a DVC remote (a directory) committed, then ``dvc repro`` of every stage;
    2. ``comment``: a comment appended to prepare's code, ``dvc repro`` again (and ``status``);
    3. the workspace committed ("baseline run") and ``dvc push``-ed;
    4. ``exp``: ``dvc exp run -n four-to-two`` with other tokens and fewer experts, which leaves
       the variant's outputs in the workspace (HEAD keeps the baseline's).

    A test that changes the workspace afterwards must be the module's last.
    """
    root = tmp_path_factory.mktemp("workspace")
    repo = scratch_repo_at(root / "repo", tiny_pipeline, mlflow_server)
    repo.env["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT
    repo.dvc("remote", "add", "-d", "storage", str(root / "dvc-remote"))
    repo.git("commit", "-qam", "a DVC remote")
    out, runs = {}, {}

    out["baseline"] = repo.dvc("repro")
    got = mlflow_rest(mlflow_server, "experiments/get-by-name", experiment_name=EXPERIMENT)
    experiment = got["experiment"]
    search = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}
    runs["baseline"] = mlflow_rest(mlflow_server, "runs/search", search)["runs"]
    baseline_eval = read_json(repo.path / "metrics/eval.json")

    with open(repo.path / "pipeline/data/sources.py", "a") as source:
        source.write("# a comment changes no data\n")
    out["comment"] = repo.dvc("repro")
    out["status"] = repo.dvc("status")
    runs["comment"] = mlflow_rest(mlflow_server, "runs/search", search)["runs"]
    repo.git("add", "-A")
    repo.git("commit", "-qm", "baseline run")
    repo.dvc("push")

    sets = [arg for pair in VARIANT_SETS for arg in ("-S", pair)]
    out["exp"] = repo.dvc("exp", "run", "-n", VARIANT, *sets)
    runs["exp"] = mlflow_rest(mlflow_server, "runs/search", search)["runs"]
    return PipelineWorkspace(repo, mlflow_server, experiment, out, runs, baseline_eval)


def read_json(path):
    return json.loads(path.read_text())


def assert_variant_names(train_runs: list[dict]) -> None:
    """What names the two variants' training runs: their run names (with the experts each
    trained) and the DVC experiment tag. The names the browser test looks for are these."""
    named = {run["info"]["run_name"]: param(run, EXPERTS_PARAM) for run in train_runs}
    assert named == TRAIN_RUN_NAMES
    assert {tag(r, "dvc.exp_name") for r in train_runs} == {None, VARIANT}


def test_repro_runs_every_stage_into_a_model_training_experiment(pipeline_workspace):
    ws = pipeline_workspace
    assert ran(ws.out["baseline"]) == set(STAGES)
    assert runs_per_stage(ws.runs["baseline"]) == dict.fromkeys(STAGES, 1)
    assert "models/hf/README.md" in ws.repo.git("ls-files", "models/hf")  # the baseline's card
    kind = {t["key"]: t["value"] for t in ws.experiment["tags"]}
    assert kind["mlflow.experimentKind"] == "custom_model_development"  # the model-training view


def test_a_comment_in_prepare_code_reruns_prepare_only(pipeline_workspace):
    """prepare re-runs, writes the same bytes, and DVC stops there; the lineage still leads
    from the card to the first prepare run (the one whose outputs the card's data came from)."""
    ws = pipeline_workspace
    out = ws.out["comment"]
    assert ran(out) == {"prepare"}
    for stage in STAGES[1:]:
        assert f"Stage '{stage}' didn't change, skipping" in out
    assert "Data and pipelines are up to date" in ws.out["status"]
    before, after = ws.runs["baseline"], ws.runs["comment"]
    assert runs_per_stage(after) == {**runs_per_stage(before), "prepare": 2}
    assert prepare_run_behind(newest(after, "card"), after) == oldest(after, "prepare")


def test_an_experiment_with_new_tokens_reruns_from_tokenize_on(pipeline_workspace):
    ws = pipeline_workspace
    assert ran(ws.out["exp"]) == set(STAGES[1:])
    runs = ws.runs["exp"]
    assert prepare_run_behind(newest(runs, "card"), runs) == newest(runs, "prepare")
    assert VARIANT in ws.repo.dvc("exp", "show", "--no-pager", "--csv")
    assert "params_total" in ws.repo.dvc("metrics", "diff")  # fewer experts: fewer parameters
    assert read_json(ws.repo.path / "metrics/eval.json").keys() == ws.baseline_eval.keys()


def test_each_variant_has_a_finished_training_run_with_its_curves(pipeline_workspace, mlflow_rest):
    ws = pipeline_workspace
    train_runs = [r for r in ws.runs["exp"] if tag(r, "pipeline.stage") == "train"]
    assert len(train_runs) == 2
    assert_variant_names(train_runs)
    for run in train_runs:
        run_id = run["info"]["run_id"]
        assert run["info"]["status"] == "FINISHED"
        history = mlflow_rest(
            ws.mlflow_uri, "metrics/get-history", run_id=run_id, metric_key="train/loss"
        )["metrics"]
        assert [m["step"] for m in history] == [5, 10, 15, 20, 25, 30]
        logged = {m["key"] for m in run["data"]["metrics"]}
        assert {"val/loss", "perf/tokens_per_s"} <= logged
        assert any(key.startswith("eval/") for key in logged), "eval metrics in the model's run"


def test_each_execution_is_one_parent_row_named_after_its_variant(pipeline_workspace):
    """pipeline/executions.py: the stage runs of each ``dvc repro`` / ``dvc exp run`` nest under
    one parent, named after the DVC experiment or the params that differ from the defaults,
    carrying the headline params and metrics, and linking the stages DVC skipped."""
    runs = pipeline_workspace.runs["exp"]
    parents = sorted(
        (r for r in runs if tag(r, "pipeline.stage") is None),
        key=lambda r: int(r["info"]["start_time"]),
    )
    baseline, comment, variant = parents  # the first repro, the comment-only one, the exp run
    by_id = {r["info"]["run_id"]: r for r in runs}
    children = {p["info"]["run_id"]: [] for p in parents}
    for run in runs:
        if tag(run, "pipeline.stage") is not None:
            children[tag(run, "mlflow.parentRunId")].append(tag(run, "pipeline.stage"))
    assert sorted(children[baseline["info"]["run_id"]]) == sorted(STAGES)
    assert children[comment["info"]["run_id"]] == ["prepare"]
    assert sorted(children[variant["info"]["run_id"]]) == sorted(STAGES[1:])

    name = baseline["info"]["run_name"]
    assert name.startswith("vocab_size=600,") and "num_experts=4" in name
    assert comment["info"]["run_name"] == name  # the same params
    assert variant["info"]["run_name"] == VARIANT
    assert param(variant, EXPERTS_PARAM) == "2" and param(baseline, EXPERTS_PARAM) == "4"
    for parent in parents:
        assert parent["info"]["status"] == "FINISHED"
        linked = {s: by_id[tag(parent, f"stage.{s}.run_id")] for s in STAGES}
        assert {s: tag(r, "pipeline.stage") for s, r in linked.items()} == {s: s for s in STAGES}
        logged = {m["key"]: m["value"] for m in parent["data"]["metrics"]}
        assert {"val_loss", "perplexity/test/bits_per_byte", "agreement/test/acc"} <= set(logged)
    # The comment-only execution ran prepare alone and links the baseline's other stage runs.
    for stage in STAGES[1:]:
        assert tag(comment, f"stage.{stage}.run_id") == tag(baseline, f"stage.{stage}.run_id")
    assert {m["key"]: m["value"] for m in comment["data"]["metrics"]} == {
        m["key"]: m["value"] for m in baseline["data"]["metrics"]
    }


def test_each_export_is_a_registered_version_that_loads_back(pipeline_workspace, mlflow_rest):
    """pipeline/export/registry.py against the live server: one version per export, its tags
    naming the export run, the card as its description, and loadable by its models:/ URI."""
    ws = pipeline_workspace
    name = ws.repo.params()["card"]["model_name"]
    found = mlflow_rest(
        ws.mlflow_uri, "model-versions/search", filter=f"name='{name}'", max_results="100"
    )["model_versions"]
    exports = [r for r in ws.runs["exp"] if tag(r, "pipeline.stage") == "export"]
    assert sorted(v["run_id"] for v in found) == sorted(r["info"]["run_id"] for r in exports)
    newest_version = max(found, key=lambda v: int(v["version"]))
    card = (ws.repo.path / "models/hf/README.md").read_text(encoding="utf-8")
    assert newest_version["description"] == card  # the variant's card, left in the workspace

    import mlflow

    mlflow.set_tracking_uri(ws.mlflow_uri)
    try:
        generator = mlflow.transformers.load_model(f"models:/{name}/{newest_version['version']}")
    finally:
        mlflow.set_tracking_uri(None)
    text = generator("The", max_new_tokens=4, do_sample=False)[0]["generated_text"]
    assert text.startswith("The") and len(text) > len("The")


def test_each_variant_has_a_card_run_holding_the_card(pipeline_workspace, mlflow_rest):
    ws = pipeline_workspace
    card_runs = [r for r in ws.runs["exp"] if tag(r, "pipeline.stage") == "card"]
    assert len(card_runs) == 2
    for run in card_runs:
        listed = mlflow_rest(
            ws.mlflow_uri, "artifacts/list", run_id=run["info"]["run_id"], path="model_card"
        )
        assert "model_card/README.md" in {f["path"] for f in listed["files"]}


def test_mlflow_ui_shows_both_variants_and_their_loss_curves(pipeline_workspace, mlflow_ui, capsys):
    """Headless Chromium over the live server: the runs page (filtered to training runs), the
    compare page of the two training runs (names, the param that differs, its chart against
    ``train/loss``) and their ``train/loss`` curves; a screenshot of each page."""
    ws = pipeline_workspace
    experiment_id = ws.experiment["experiment_id"]
    run_ids = [r["info"]["run_id"] for r in ws.runs["exp"] if tag(r, "pipeline.stage") == "train"]
    ui = mlflow_ui(ws.mlflow_uri)

    ui.open(f"#/experiments/{experiment_id}/runs?searchFilter={TRAIN_RUNS_FILTER}")
    ui.wait("a run in the runs table", lambda _: ui.run_names())
    ui.expand_parent_rows()
    ui.wait("both training runs, by name", lambda _: set(TRAIN_RUN_NAMES) <= set(ui.run_names()))
    ui.screenshot("runs")

    ui.open(f"#/compare-runs?runs={quoted(run_ids)}&experiments={quoted([experiment_id])}")
    names, experts = ui.table_row("Run Name:"), ui.table_row(EXPERTS_PARAM)
    assert dict(zip(names, experts, strict=True)) == TRAIN_RUN_NAMES
    ui.wait_for_chart(EXPERTS_PARAM, "train/loss")  # parallel coordinates: param vs loss
    ui.screenshot("compare")

    chart = {"runs": run_ids, "metric": "train/loss", "experiments": [experiment_id]}
    chart["plot_metric_keys"] = ["train/loss"]
    query = "&".join(f"{key}={quoted(value)}" for key, value in chart.items())
    ui.open(f"#/metric?{query}&x_axis=step")
    legend = [f"{name} (train/loss)" for name in TRAIN_RUN_NAMES]
    ui.wait("a train/loss curve per run", lambda _: ui.curves() >= len(TRAIN_RUN_NAMES))
    ui.wait("the curves' legend", lambda _: all(ui.shown(entry) for entry in legend))
    ui.screenshot(README_SCREENSHOT)

    with capsys.disabled():
        print(f"\nMLflow UI screenshots: {ui.screenshots}")
    if target := os.environ.get("MOE_SCREENSHOT_DIR"):
        shutil.copy(ui.screenshots / f"{README_SCREENSHOT}.png", Path(target))


def test_plots_diff_overlays_both_variants_loss_curves(pipeline_workspace, tmp_path):
    """``dvc plots diff`` of the baseline commit and the experiment, rendered to HTML: the
    training and the validation loss curves each hold both revisions' series, point for point
    the CSV each revision committed."""
    repo = pipeline_workspace.repo
    revisions = {"HEAD": "HEAD", VARIANT: experiment_ref(repo, VARIANT)}  # label -> git rev
    repo.dvc("plots", "diff", *revisions, "-o", str(tmp_path / "plots"))
    specs = vega_specs((tmp_path / "plots" / "index.html").read_text())
    for path, y in (("plots/train/loss.csv", "train_loss"), ("plots/train/val.csv", "val_loss")):
        spec = specs[path]
        assert spec["encoding"]["color"]["scale"]["domain"] == list(revisions), path
        assert y in json.dumps(spec["layer"]), f"{path}: {y} on the y axis"
        for label, rev in revisions.items():
            series = [(v["step"], v[y]) for v in spec["data"]["values"] if v["rev"] == label]
            committed = [(row["step"], row[y]) for row in csv_rows(repo, rev, path)]
            assert series == committed and len(series) >= 3, f"{path} at {label}"


@pytest.fixture(scope="module")
def teammate(pipeline_workspace, tmp_path_factory):
    """README "Working as a team": the workspace's commits and its experiment pushed to a shared
    git remote (``git push``, ``dvc exp push``, which also pushes the experiment's outputs to the
    DVC remote the fixture pushed the baseline to); a teammate's ``git clone`` of it, with an MLflow
    store of their own, after ``dvc pull``."""
    ws = pipeline_workspace
    root = tmp_path_factory.mktemp("team")
    shared = root / "shared.git"
    subprocess.run(["git", "init", "-q", "--bare", str(shared)], check=True)
    ws.repo.git("push", "-q", str(shared), "HEAD:refs/heads/main")
    ws.repo.dvc("exp", "push", str(shared), VARIANT)

    own_store = {"MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    clone = type(ws.repo)(root / "clone", {**ws.repo.env, **own_store})
    subprocess.run(["git", "clone", "-q", "-b", "main", str(shared), str(clone.path)], check=True)
    clone.dvc("pull")
    return clone


def test_a_teammate_pulls_exactly_the_locked_outputs_and_has_nothing_to_run(teammate):
    assert_outputs_match_the_lock(teammate.path)
    assert "Data and pipelines are up to date" in teammate.dvc("status")
    assert ran(teammate.dvc("repro")) == set()


def test_a_teammate_regenerates_the_same_card_from_pulled_outputs(teammate):
    """The card is a function of the pipeline's outputs: rebuilt by the teammate with an empty
    MLflow store, it equals the committed one, README and plots."""
    teammate.dvc("repro", "--force", "--single-item", "card")
    regenerated = teammate.git("diff", "--", "models/hf")
    teammate.git("checkout", "-q", "--", ".")  # the committed card and dvc.lock back in place
    assert regenerated == "", f"the regenerated card differs:\n{regenerated}"


def test_an_experiment_travels_through_exp_push_and_pull(pipeline_workspace, teammate):
    """``dvc exp pull`` brings the experiment: ``dvc exp show`` lists it, and the outputs that
    git does not hold (the variant's model, tokens, ...) reach the cache from the DVC remote."""
    repo = pipeline_workspace.repo
    ref = experiment_ref(repo, VARIANT)
    lock = yaml.safe_load(repo.git("show", f"{ref}:dvc.lock"))
    in_git = repo.git("ls-tree", "-r", "--name-only", ref).split()
    by_dvc = [
        out
        for out in locked_outputs(lock)
        if not any(f == out["path"] or f.startswith(out["path"] + "/") for f in in_git)
    ]
    assert [out for out in by_dvc if not cached(teammate.path, out["md5"])], "new outputs"

    teammate.dvc("exp", "pull", "origin", VARIANT)
    assert VARIANT in teammate.dvc("exp", "show", "--no-pager", "--csv")
    assert [out["path"] for out in by_dvc if not cached(teammate.path, out["md5"])] == []


def test_another_task_list_reruns_only_evaluate_and_card(pipeline_workspace):
    """Changes the workspace: the last test of this module (the others read the commits, the
    experiment and the server)."""
    repo = pipeline_workspace.repo
    params = repo.params()
    params["evaluate"]["tasks"] = ["agreement"]
    repo.set_params(params)
    assert ran(repo.dvc("repro")) == {"evaluate", "card"}


def ran(dvc_output: str) -> set[str]:
    """The stages a ``dvc repro`` or ``dvc exp run`` ran."""
    return {line.split("'")[1] for line in dvc_output.splitlines() if "Running stage" in line}


def runs_per_stage(runs: list[dict]) -> dict[str, int]:
    return {stage: sum(tag(r, "pipeline.stage") == stage for r in runs) for stage in STAGES}


def by_start(runs: list[dict], stage: str) -> list[dict]:
    of_stage = [r for r in runs if tag(r, "pipeline.stage") == stage]
    return sorted(of_stage, key=lambda r: int(r["info"]["start_time"]))


def newest(runs: list[dict], stage: str) -> dict:
    return by_start(runs, stage)[-1]


def oldest(runs: list[dict], stage: str) -> dict:
    return by_start(runs, stage)[0]


def prepare_run_behind(card_run: dict, runs: list[dict]) -> dict:
    """The prepare run reached from a card run through the lineage tags (card -> train ->
    tokenize -> prepare); the card's own prepare tag must name the same run."""
    by_id = {r["info"]["run_id"]: r for r in runs}
    run = card_run
    for stage in ("train", "tokenize", "prepare"):
        run = by_id[tag(run, f"upstream.{stage}.run_id")]
    assert tag(card_run, "upstream.prepare.run_id") == run["info"]["run_id"]
    return run


def tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def param(run: dict, key: str) -> str | None:
    return next((p["value"] for p in run["data"].get("params", []) if p["key"] == key), None)


def csv_rows(repo, revision: str, path: str) -> list[dict]:
    return list(csv.DictReader(repo.git("show", f"{revision}:{path}").splitlines()))


def experiment_ref(repo, name: str) -> str:
    """The git ref of the DVC experiment ``name`` (``refs/exps/<baseline>/<name>``)."""
    refs = repo.git("for-each-ref", "--format=%(refname)", "refs/exps").split()
    (ref,) = [r for r in refs if r.endswith(f"/{name}")]
    return ref


def vega_specs(html: str) -> dict[str, dict]:
    """The Vega-Lite spec of each plot in ``dvc plots`` HTML, by its title (the plot's file)."""
    decoder = json.JSONDecoder()
    specs = {}
    for found in re.finditer(r"var spec = ", html):
        spec, _ = decoder.raw_decode(html, found.end())
        specs[spec["title"]["text"]] = spec
    return specs


def quoted(value) -> str:
    """``value`` as JSON, URL-quoted: how MLflow's UI routes take ids and metric names."""
    return urllib.parse.quote(json.dumps(value))


def locked_outputs(lock: dict) -> list[dict]:
    return [out for stage in lock["stages"].values() for out in stage.get("outs", [])]


def dvc_hash(path: Path) -> str:
    """DVC's md5 of a file, or of a directory: the md5 of its manifest, the sorted list of
    ``{"md5", "relpath"}`` of its files serialised as DVC stores it (``<md5>.dir``)."""
    if path.is_file():
        return hashlib.md5(path.read_bytes()).hexdigest()
    files = sorted(f.relative_to(path).as_posix() for f in path.rglob("*") if f.is_file())
    manifest = [{"md5": dvc_hash(path / name), "relpath": name} for name in files]
    return hashlib.md5(json.dumps(manifest, sort_keys=True).encode()).hexdigest() + ".dir"


def cached(root: Path, md5: str) -> bool:
    """Whether the DVC cache at ``root`` holds the object ``md5`` (and, for a directory, every
    file of its manifest)."""
    found = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    if not found.is_file():
        return False
    if not md5.endswith(".dir"):
        return True
    return all(cached(root, entry["md5"]) for entry in json.loads(found.read_text()))


def assert_outputs_match_the_lock(root: Path) -> None:
    """Every output dvc.lock names is in the workspace with the hash it names (a directory: its
    exact set of files, each with its content)."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    outputs = locked_outputs(lock)
    assert len(outputs) > 10, "every stage's outputs"
    for out in outputs:
        assert dvc_hash(root / out["path"]) == out["md5"], out["path"]
