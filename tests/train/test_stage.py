"""The train stage end to end: output files, exported weights, MLflow metrics, the CLI."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from safetensors.torch import load_model

from pipeline.data.shards import write_split
from pipeline.io import sha256_file
from pipeline.tracking import stage_run
from pipeline.train.data import TrainDataError
from stages import train as train_stage

REPO = Path(__file__).resolve().parents[2]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_writes_metrics_plots_and_weights_and_logs_to_mlflow(
    tmp_path, tiny, mlflow_uri, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # MLflow puts artifacts in ./mlruns beside a sqlite store
    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(max_steps=6, monitor={"log_every": 2, "val_every": 3})
    with stage_run("train", p, {}, {}, tmp_path / "run.json") as tracked:
        metrics = train_stage.run(p, paths, tiny.RUN_KEY, mlflow_run_id=tracked.run_id)

    timings = ("wall_time_s", "tokens_per_s", "mfu", "peak_flops_per_device")
    written = json.loads(paths.train_metrics.read_text())  # the card depends on it: no timings
    assert written == pytest.approx({k: v for k, v in metrics.items() if k not in timings})
    assert json.loads(paths.train_timing.read_text()) == {k: metrics[k] for k in timings}
    assert metrics["steps"] == 6 and metrics["params_active"] <= metrics["params_total"]
    assert metrics["val_loss"] < metrics["unigram_entropy"] < np.log(tiny.VOCAB)
    assert metrics["val_perplexity"] == pytest.approx(
        torch.tensor(metrics["val_loss"]).exp().item()
    )
    assert metrics["tokens_per_s"] > 0 and 0 < metrics["mfu"] < 1
    assert [int(r["step"]) for r in rows(paths.train_plots_dir / "loss.csv")] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows(paths.train_plots_dir / "val.csv")] == [3, 6]
    load = rows(paths.train_plots_dir / "load.csv")
    assert {(r["layer"], r["expert"]) for r in load} == {
        (str(layer), str(e)) for layer in range(2) for e in range(4)
    }
    assert sum(
        float(r["load"]) for r in load if r["step"] == "6" and r["layer"] == "0"
    ) == pytest.approx(1.0)

    client = MlflowClient(mlflow_uri)
    run = client.get_run(tracked.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(tracked.run_id, "train/loss")] == [2, 4, 6]
    assert [m.step for m in client.get_metric_history(tracked.run_id, "val/loss")] == [3, 6]
    logged = set(run.data.metrics)
    for name in ("train/lr", "train/grad_norm", "train/aux_loss", "perf/tokens_per_s", "perf/mfu"):
        assert name in logged
    for name in ("load/e3", "max_over_mean", "cv", "entropy", "dropped_fraction"):
        assert f"router/layer1/{name}" in logged


def test_exported_weights_are_the_final_weights(tmp_path, tiny):
    from pipeline.model import MoETransformer

    paths = tiny.write_tokens(tmp_path)
    p = tiny.params(max_steps=2, runtime={"checkpoint_every": 2})
    train_stage.run(p, paths, tiny.RUN_KEY)
    config = json.loads(paths.model_files.config.read_text())
    assert config["vocab_size"] == tiny.VOCAB and config["model"] == p.train.model.model_dump(
        mode="json"
    )
    model = MoETransformer(p.train.model, config["vocab_size"])
    load_model(model, paths.model_files.weights)
    final = torch.load(paths.last_checkpoint(tiny.RUN_KEY), weights_only=True)["state_dict"]
    exported = model.state_dict()
    assert {f"model.{k}" for k in exported} == set(final)
    assert all(torch.equal(exported[k], final[f"model.{k}"]) for k in exported)


def test_too_small_corpus_is_a_pipeline_error(tmp_path, tiny):
    paths = tiny.write_tokens(tmp_path)
    small = [[list(range(1, 20))]]  # 20 tokens; a window needs 33
    write_split(
        paths.token_split("train"),
        "train",
        small,
        dtype="uint16",
        vocab_size=tiny.VOCAB,
        eot_id=tiny.EOT,
    )
    with pytest.raises(
        TrainDataError, match=r"tokens/train: corpus smaller than one training window"
    ):
        train_stage.run(tiny.params(), paths, tiny.RUN_KEY)


def test_cli_tracks_the_run_with_lineage(tmp_path, tiny, mlflow_uri):
    paths = tiny.write_tokens(tmp_path)
    token_sha256 = {
        f"{split}_tokens": sha256_file(paths.token_split(split) / "manifest.json")
        for split in ("train", "validation")
    }
    with stage_run("tokenize", tiny.params(), {}, {}, tmp_path / "tokenize-run.json") as tokenize:
        tokenize.set_outputs(token_sha256)  # the run the train stage finds by its inputs
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump(tiny.merge(tiny.TINY, {"train": {"max_steps": 2}}))
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "stages.train"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = json.loads((tmp_path / "models" / "run.json").read_text())["run_id"]
    run = MlflowClient(mlflow_uri).get_run(run_id)
    assert run.data.tags["upstream.tokenize.run_id"] == tokenize.run_id
    assert run.data.tags["input.train_tokens.sha256"] == sha256_file(
        paths.token_split("train") / "manifest.json"
    )
    assert run.data.metrics["steps"] == 2 and "train/loss" in run.data.metrics
    assert "training on cpu" in proc.stderr  # the one line saying what ran
    assert "host memory: " in proc.stderr  # and the line saying how the process keeps memory


def test_bf16_mixed_runs_on_cpu_and_says_so(tmp_path, tiny, caplog):
    paths = tiny.write_tokens(tmp_path)
    with caplog.at_level("INFO", logger="pipeline.train.callbacks"):
        p = tiny.params(max_steps=2, runtime={"precision": "bf16-mixed"})
        metrics = train_stage.run(p, paths, tiny.RUN_KEY)
    assert torch.isfinite(torch.tensor(metrics["val_loss"]))
    assert "precision bf16-mixed" in caplog.text and "training on cpu" in caplog.text


@pytest.mark.slow
def test_compiled_model_trains_like_eager(tmp_path, tiny):
    """torch.compile changes kernels, not maths: same losses within fp32 fusion noise."""
    eager = tiny.run(tiny.write_tokens(tmp_path / "e"), tiny.params(max_steps=3))
    compiled = tiny.run(
        tiny.write_tokens(tmp_path / "c"), tiny.params(max_steps=3, runtime={"compile": True})
    )
    assert tiny.losses(compiled) == pytest.approx(tiny.losses(eager), rel=1e-4)


def test_run_fingerprint_follows_what_is_trained_not_where_or_how_it_is_watched(tiny):
    from pipeline.train.outputs import run_fingerprint

    base = run_fingerprint(tiny.params(), "data-a")
    runtime = {"devices": 2, "strategy": "ddp", "checkpoint_every": 1, "resume": "never"}
    same = [
        tiny.params(runtime=runtime, monitor={"log_every": 1}),
        tiny.params(runtime={"backend": "reference", "precision": "bf16-mixed", "compile": True}),
    ]
    other = [tiny.params(max_steps=9), tiny.params(optim={"lr": 0.5}), tiny.params(seq_len=16)]
    assert {run_fingerprint(p, "data-a") for p in same} == {base}
    assert base not in {run_fingerprint(p, "data-a") for p in other}
    assert run_fingerprint(tiny.params(), "data-b") != base
