"""The routing × balance grid of issue 19 as DVC experiments on the real-text preset: queue it,
then the table for bench/RESULTS.md and the same runs compared in MLflow.

    python bench/routing_grid.py queue [--dry-run]   # one `dvc exp run --queue` per point
    dvc queue start --jobs 1                         # then wait: dvc queue status
    python bench/routing_grid.py run                 # or: one after another, in the workspace
    python bench/routing_grid.py table               # markdown, from `dvc exp show --json`
    python bench/routing_grid.py mlflow              # the runs in the MLflow store + compare URL

The points are the params files ``examples/routing-grid/<point>.yaml`` (README.md there); each
experiment, named ``routing-<point>``, takes every key of ``examples/real-text/params.yaml`` and
then the point's, and runs the ``train`` stage (with prepare and tokenize, shared through DVC's
run cache).

Table columns (all from the experiment's metrics files): validation loss (the train stage's, nats
per token); validation bits per byte, that loss / ln 2 / the validation split's UTF-8 bytes per
token (``metrics/tokenize.json``); MaxVio and the dead-expert fraction at the last logging step,
the largest over the MoE layers (``routing_health/layer<i>/...`` in ``metrics/train.json``);
the routing digest; training tokens/s (one experiment at a time, so the machine is the same).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import flatten_keys  # noqa: E402

GRID = ROOT / "examples" / "routing-grid"
PRESET = ROOT / "examples" / "real-text" / "params.yaml"
PREFIX = "routing-"
# Every point's batch geometry: 16 sequences per optimizer step in 4 accumulated micro-batches of
# 4, so that "micro" (each micro-batch balanced) and "global" (the whole step) differ; with one
# micro-batch per step and one process they would be the same loss.
GEOMETRY = {"train.micro_batch_size": 4, "train.grad_accum": 4}


def points() -> dict[str, dict]:
    """Point name → its dotted params keys."""
    return {
        p.stem: flatten_keys(yaml.safe_load(p.read_text())) for p in sorted(GRID.glob("*.yaml"))
    }


def queue_commands(queue: bool = True) -> list[list[str]]:
    """``dvc exp run [--queue]`` per point: the preset's keys, the shared geometry, then the
    point's (JSON values are YAML, so strings with globs or colons pass through ``-S`` intact).
    Queued experiments run in temporary copies of the repository, which hold only what git or
    DVC tracks: the fetched corpus must be tracked there (``dvc add corpus``); ``queue=False``
    runs in the workspace itself."""
    preset = flatten_keys(yaml.safe_load(PRESET.read_text()))
    commands = []
    for name, overrides in points().items():
        settings = {**preset, **GEOMETRY, **overrides}
        pairs = [arg for k, v in settings.items() for arg in ("-S", f"{k}={json.dumps(v)}")]
        run = ["dvc", "exp", "run", *(["--queue"] if queue else [])]
        commands.append([*run, "-n", PREFIX + name, *pairs, "train"])
    return commands


def experiments(node) -> Iterator[tuple[str, dict]]:
    """``(name, data)`` of every experiment in ``dvc exp show --json``'s nested records."""
    if isinstance(node, list):
        for item in node:
            yield from experiments(item)
    elif isinstance(node, dict):
        if isinstance(node.get("name"), str) and isinstance(node.get("data"), dict):
            yield node["name"], node["data"]
        for value in node.values():
            if isinstance(value, list | dict):
                yield from experiments(value)


def metrics_file(data: dict, path: str) -> dict:
    return (data.get("metrics") or {}).get(path, {}).get("data") or {}


def worst(train: dict, name: str) -> float:
    """The largest of a final routing-health measure over the MoE layers."""
    return max(v for k, v in train.items() if k.startswith("routing_health/layer")
               and k.endswith(f"/{name}"))  # fmt: skip


def table_rows() -> list[list[str]]:
    shown = subprocess.run(
        ["dvc", "exp", "show", "--json", "--all-commits"], cwd=ROOT, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    found = {n: d for n, d in experiments(json.loads(shown.stdout)) if n.startswith(PREFIX)}
    rows = []
    for point in points():
        data = found.get(PREFIX + point)
        if data is None:
            rows.append([point, *["not run"] * 6])
            continue
        train = metrics_file(data, "metrics/train.json")
        timing = metrics_file(data, "metrics/train_timing.json")
        per_token = metrics_file(data, "metrics/tokenize.json")["validation"]["bytes_per_token"]
        rows.append([
            point,
            f"{train['val_loss']:.4f}",
            f"{train['val_loss'] / math.log(2) / per_token:.4f}",
            f"{worst(train, 'max_vio'):.3f}",
            f"{worst(train, 'dead_fraction'):.3f}",
            f"`{train['routing_digest']}`",
            f"{timing['tokens_per_s']:.0f}",
        ])  # fmt: skip
    return rows


def mlflow_runs() -> None:
    """The train runs of the grid in the MLflow store (the latest finished one per point), their
    final metrics, and the MLflow UI's compare view of exactly these runs."""
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import experiment_name, tracking_uri

    client = MlflowClient(tracking_uri())
    experiment = client.get_experiment_by_name(experiment_name())
    names = {PREFIX + p for p in points()}
    runs = client.search_runs(  # MLflow's filter has no IN for tags: the names are matched here
        [experiment.experiment_id],
        "tags.`pipeline.stage` = 'train' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    latest = {}
    for run in runs:
        if run.data.tags.get("dvc.exp_name") in names:
            latest.setdefault(run.data.tags["dvc.exp_name"], run)
    print("| point | MLflow run | val_loss | max router/layer*/max_vio | tokens_per_s |")
    print("|---|---|---|---|---|")
    for name, run in latest.items():
        m = run.data.metrics
        vio = max(v for k, v in m.items() if k.startswith("router/") and k.endswith("/max_vio"))
        print(f"| {name} | {run.info.run_id} | {m['val_loss']:.4f} | {vio:.3f} | "
              f"{m['tokens_per_s']:.0f} |")  # fmt: skip
    ids = urllib.parse.quote(json.dumps([r.info.run_id for r in latest.values()]))
    experiments_ = urllib.parse.quote(json.dumps([experiment.experiment_id]))
    compare = f"#/compare-runs?runs={ids}&experiments={experiments_}"
    print(f"\nmlflow ui --backend-store-uri {tracking_uri()}\nhttp://127.0.0.1:5000/{compare}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["queue", "run", "table", "mlflow"])
    parser.add_argument("--dry-run", action="store_true", help="queue/run: print, do not run")
    args = parser.parse_args()
    if args.action in ("queue", "run"):
        for command in queue_commands(queue=args.action == "queue"):
            print(shlex.join(command if args.dry_run else command[:6]), flush=True)
            if not args.dry_run:
                subprocess.run(command, cwd=ROOT, check=True)
    elif args.action == "table":
        header = ["point", "val loss", "val bits/byte", "MaxVio", "dead experts", "routing digest",
                  "tokens/s"]  # fmt: skip
        print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        for row in table_rows():
            print("| " + " | ".join(row) + " |")
    else:
        mlflow_runs()


if __name__ == "__main__":
    main()
