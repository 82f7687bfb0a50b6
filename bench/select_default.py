"""Choose the default training configuration on the dev items, never the test items.

    dvc repro tokenize                                  # the data every candidate shares
    python bench/select_default.py                      # bench/default_candidates.yaml
    python bench/select_default.py --only base lr5e-3   # some candidates

Each candidate is the shipped ``params.yaml`` with a few dotted overrides (the YAML file's
``candidates:``), trained and evaluated (native model) in its own directory under ``--workdir``
that shares this workspace's ``data/`` read-only. Printed and written to
``<workdir>/selection.json``: per candidate, the training tokens and wall time, the validation
loss, and for each generated task the **dev** accuracy, the strongest **dev** baseline and the
margin between them in stderr. The test keys of each candidate's ``metrics/eval.json`` are never
read. The rule that picks the winner is fixed before any run (the YAML file's ``rule``): the
highest mean dev margin over the tasks; the winner becomes the default, and only then is the test
set evaluated — once, by the default pipeline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

from pipeline.config import LOCAL_TASKS

ROOT = Path(__file__).resolve().parents[1]


def set_dotted(tree: dict, dotted: str, value) -> None:
    *parents, leaf = dotted.split(".")
    for key in parents:
        tree = tree[key]
    if leaf not in tree:
        raise SystemExit(f"override {dotted}: no such key in params.yaml")
    tree[leaf] = value


def run_candidate(name: str, overrides: dict, workdir: Path) -> dict:
    """Train and evaluate one candidate in ``workdir/name``; its dev figures."""
    directory = workdir / name
    directory.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in overrides.items():
        set_dotted(params, dotted, value)
    (directory / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if not (directory / "data").exists():
        (directory / "data").symlink_to(ROOT / "data")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_DATASETS_OFFLINE": "1"}
    started = time.perf_counter()
    for stage in ("train", "evaluate"):
        log = directory / f"{stage}.log"
        with log.open("w") as out:
            done = subprocess.run(
                [sys.executable, "-m", f"stages.{stage}"], cwd=directory, env=env, stdout=out,
                stderr=subprocess.STDOUT, check=False,
            )  # fmt: skip
        if done.returncode:
            raise SystemExit(f"{name}: {stage} failed (exit {done.returncode}); see {log}")
    wall_s = time.perf_counter() - started
    train = json.loads((directory / "metrics" / "train.json").read_text())
    timing = json.loads((directory / "metrics" / "train_timing.json").read_text())
    ev = json.loads((directory / "metrics" / "eval.json").read_text())
    dev = {
        task: {
            "acc": ev[f"{task}/dev/acc"],
            "baseline_best": ev[f"{task}/dev/baseline_best"],
            "margin_stderr": ev[f"{task}/dev/above_baseline_stderr"],
        }
        for task in LOCAL_TASKS
    }
    t = params["train"]
    return {
        "overrides": overrides,
        "train_tokens": train["steps"] * t["micro_batch_size"] * t["grad_accum"] * t["seq_len"],
        "train_tokens_per_s": timing["tokens_per_s"],
        "wall_s": round(wall_s, 1),
        "val_loss": train["val_loss"],
        "dev": dev,
        "mean_dev_margin_stderr": statistics.mean(d["margin_stderr"] for d in dev.values()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--candidates", type=Path, default=ROOT / "bench" / "default_candidates.yaml")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/moe-select-default"))
    p.add_argument("--only", nargs="*", help="candidate names to run (default: all)")
    args = p.parse_args()
    spec = yaml.safe_load(args.candidates.read_text())
    print(f"rule: {spec['rule']}")
    results_path = args.workdir / "selection.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name, overrides in spec["candidates"].items():
        if args.only and name not in args.only:
            continue
        results[name] = run_candidate(name, overrides or {}, args.workdir)
        results_path.write_text(json.dumps(results, indent=1))
        r = results[name]
        margins = ", ".join(
            f"{t} {d['acc']:.3f} vs {d['baseline_best']:.3f} ({d['margin_stderr']:+.1f})"
            for t, d in r["dev"].items()
        )
        print(
            f"{name:14s} {r['train_tokens'] / 1e6:.2f}M tokens {r['wall_s']:6.0f} s "
            f"val {r['val_loss']:.3f} | dev {margins} | mean margin "
            f"{r['mean_dev_margin_stderr']:+.2f}",
            flush=True,
        )
    best = max(results, key=lambda n: results[n]["mean_dev_margin_stderr"])
    print(f"chosen on dev: {best}")


if __name__ == "__main__":
    main()
