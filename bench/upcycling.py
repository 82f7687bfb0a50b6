"""Issue 20's compute-matched experiment: sparse upcycling against dense and MoE training from
scratch on the real-text preset, compared at equal training FLOPs.

    python examples/real-text/fetch_corpus.py      # corpus/real-text/, once
    python bench/upcycling.py run [--dry-run]      # prepare + tokenize once, then the four arms
    python bench/upcycling.py table                # markdown for bench/RESULTS.md
    python bench/upcycling.py plot                 # bench/upcycling.png, also into the MLflow runs

The arms, with N = ``--dense-steps`` and M = ``--upcycled-steps`` (300 each by default: 1.2 M
tokens at the preset's batch of 16 windows of 256 tokens):

1. ``dense-N``: the dense model (every layer dense, ``first_dense_layers = n_layers``), N steps;
2. ``upcycled-N-M-<method>``: arm 1's final weights upcycled into the MoE model
   (``train.init.upcycle_from``, ``--method``; routers ``router_init: normal``, the default),
   M steps;
3. ``moe-<N+M>``: the same MoE model from scratch, N + M steps;
4. ``dense-<N+M>``: the dense model, N + M steps.

Shapes, fixed before any run: the shipped model (d_model 128, 4 layers, GQA 4/2 heads, tied
embeddings, ``dense_hidden`` 384 = 3 · d_model) is the dense model; the shipped MoE layer (8
experts, top-2 softmax router, micro-batch balance loss 0.01) with ``expert_hidden =
dense_hidden`` is the MoE model: upcycling makes every expert a copy of the dense MLP, so the
experts are as wide as it (the pipeline variant README.md documents). Per
token the MoE model runs two such MLPs where the dense model runs one: 1.28x the dense model's
training FLOPs at vocabulary 8192 (16.2 M against 12.6 M per token; the tied 8192 x 128 head is
the largest matrix of either).

Method ``copy`` (the default), fixed before any run: it is sparse upcycling as Komatsuzaki et
al. 2022 (arXiv:2212.05055) define it, and with renormalised top-k and no shared experts the
upcycled model computes the dense model's function at step 0 (tests/model/test_upcycling.py),
so arm 2 starts exactly where arm 1 ends and what follows is the MoE's training alone. ``drop``
(arXiv:2502.19261) adds a second change (half of every expert redrawn) and is one more arm:
``run --method drop`` adds it (its own directory and MLflow run; the other three are shared and
skipped), ``table --method drop`` shows it with them.

The upcycled arm trains with ``seed + 1``: the train stage draws its window order from the
seed, and with the dense run's seed the M upcycled steps would revisit exactly the windows of
the dense run's first M steps, in the same order; with another seed about half of them are
new, closer to arms 3 and 4, which read each window of the train split about once. It also
starts a fresh optimizer and learning-rate schedule (warm-up, then decay over its M steps).

Each arm is the train stage (``python -m stages.train``) in its own directory under
``--workdir``, all sharing one prepare + tokenize of the preset (``data-stages/``); an arm
whose ``metrics/train.json`` exists is skipped, a killed arm resumes from its checkpoint. The
stages log into the repository's MLflow store (``MLFLOW_TRACKING_URI``, else ``mlflow.db``):
the upcycled run's lineage tags name arm 1's train run and weights. After each arm this script
adds ``flops/val_loss`` and ``flops/val_bits_per_byte`` to its run with step = cumulative
training FLOPs, so MLflow's charts of those metrics put the runs on one FLOPs axis.

Training FLOPs per step: the train stage's own accounting for MFU,
``MoETransformer.flops_per_token`` (6 x the active parameters in matrix products + the
attention scores; a MoE layer counts its top-k experts and its router, not the other experts),
times the tokens of an optimizer step. The upcycled arm's axis starts at arm 1's total.
Validation is not training and is not counted. Validation loss: the train stage's
(``plots/train/val.csv``: every ``val_every`` steps and at the end); bits per byte = loss / ln 2
/ the validation split's UTF-8 bytes per token (``metrics/tokenize.json``), as in
bench/routing_grid.py. The matched table takes the end of each arm as a FLOPs point and reads
every curve there: a logged validation, or a linear interpolation (in FLOPs) between the two
around it, marked †; an interpolated or mid-run point is before that run's learning-rate decay.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import (  # noqa: E402
    ConfigError,
    ModelConfig,
    Params,
    flatten_keys,
    load_params,
    parse_params,
)
from pipeline.io import read_json  # noqa: E402
from pipeline.paths import ModelFiles  # noqa: E402

PRESET = ROOT / "examples" / "real-text" / "params.yaml"
WORKDIR = ROOT / "bench" / "upcycling_runs"
DATA = "data-stages"  # the workspace of prepare + tokenize, shared by the arms
DENSE_COPY = "dense"  # in the upcycled arm's directory: arm 1's model files (upcycle_from)
DATA_SECTIONS = ("seed", "prepare", "tokenize")
# A logged point's FLOPs are products of the same floats as the matched point's: equal to a few
# ulps, never 1e-9 apart unless they are different steps.
SAME_FLOPS = 1e-9


@dataclass(frozen=True)
class Arm:
    key: str  # its directory and its MLflow tag bench.upcycling.arm
    label: str
    steps: int
    kind: str  # dense | moe | upcycled
    source: str | None = None  # upcycled: the arm whose final weights it starts from


def plan(dense_steps: int, upcycled_steps: int, method: str) -> list[Arm]:
    """The four arms, in the order they run (the upcycled arm needs the first)."""
    n, m = dense_steps, upcycled_steps
    dense = Arm(f"dense-{n}", f"dense, {n} steps", n, "dense")
    upcycled = Arm(
        f"upcycled-{n}-{m}-{method}", f"dense {n} + upcycled ({method}) {m} steps", m,
        "upcycled", dense.key,
    )  # fmt: skip
    return [
        dense,
        upcycled,
        Arm(f"moe-{n + m}", f"MoE from scratch, {n + m} steps", n + m, "moe"),
        Arm(f"dense-{n + m}", f"dense, {n + m} steps", n + m, "dense"),
    ]


# ----------------------------------------------------------------------------- settings
def base_settings(params_files: Sequence[Path], sets: Sequence[str]) -> dict[str, Any]:
    """Dotted keys: the shipped params.yaml, the preset's keys, each ``--params`` file's, then
    each ``--set KEY=VALUE`` (the value read as YAML, as ``dvc exp run -S`` does)."""
    flat = flatten_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    for path in (PRESET, *params_files):
        flat.update(flatten_keys(yaml.safe_load(Path(path).read_text()) or {}))
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE, e.g. train.monitor.val_every=25")
        flat[key] = yaml.safe_load(value)
    return flat


def data_settings(base: dict[str, Any]) -> dict[str, Any]:
    """What prepare + tokenize run with: the base's data sections, the shipped rest (so that a
    change of a train key alone does not touch the shared data)."""
    shipped = flatten_keys(yaml.safe_load((ROOT / "params.yaml").read_text()))
    return shipped | {k: v for k, v in base.items() if k.split(".")[0] in DATA_SECTIONS}


def arm_settings(base: dict[str, Any], arm: Arm, method: str) -> dict[str, Any]:
    """The base with the arm's length and model (module docstring: shapes, seed)."""
    flat = {**base, "train.max_steps": arm.steps}
    if arm.kind == "dense":
        flat["train.model.first_dense_layers"] = base["train.model.n_layers"]
    else:  # every expert a copy of the dense MLP, so as wide; arm 3 the same model
        flat["train.model.moe.expert_hidden"] = base["train.model.dense_hidden"]
    if arm.kind == "upcycled":
        flat |= {"train.init.upcycle_from": DENSE_COPY, "train.init.method": method,
                 "seed": base["seed"] + 1}  # fmt: skip
    return flat


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return tree


def validated(flat: dict[str, Any], name: str) -> Params:
    try:
        return parse_params(nested(flat), source=f"the params of {name}")
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def write_params(directory: Path, flat: dict[str, Any]) -> None:
    """``directory/params.yaml``; a directory of other params is refused."""
    text = yaml.safe_dump(nested(flat), sort_keys=False)
    path = directory / "params.yaml"
    if path.exists() and path.read_text() != text:
        raise SystemExit(
            f"{path}: these outputs were made with other params; remove {directory} to redo "
            "it, or pass another --workdir"
        )
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ----------------------------------------------------------------------------- running
def stage_env() -> dict[str, str]:
    """The stages log into this repository's MLflow store, wherever they run."""
    from pipeline.tracking import tracking_uri

    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "MLFLOW_TRACKING_URI": tracking_uri()}


def run_stage(directory: Path, stage: str, env: dict[str, str]) -> None:
    log = directory / f"{stage}.log"
    started = time.perf_counter()
    print(f"{directory.name}: {stage} (log: {log})", flush=True)
    with log.open("w") as out:
        done = subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=directory, env=env,
                              stdout=out, stderr=subprocess.STDOUT, check=False)  # fmt: skip
    if done.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-15:])
        raise SystemExit(
            f"{tail}\n{directory.name}: {stage} failed (exit {done.returncode}); {log}"
        )
    print(f"{directory.name}: {stage} done in {time.perf_counter() - started:.0f} s", flush=True)


def prepare_data(workdir: Path, base: dict[str, Any], env: dict[str, str]) -> None:
    directory = workdir / DATA
    write_params(directory, data_settings(base))
    link = directory / "corpus"  # the preset's glob is relative: corpus/real-text/**/*.txt
    if not link.exists():
        link.symlink_to(ROOT / "corpus")
    if not (directory / "metrics" / "tokenize.json").exists():
        for stage in ("prepare", "tokenize"):
            run_stage(directory, stage, env)


def run_arm(workdir: Path, arm: Arm, settings: dict[str, Any], env: dict[str, str]) -> bool:
    """Train the arm unless it has finished; True when it trained now."""
    directory = workdir / arm.key
    write_params(directory, settings)
    if (directory / "metrics" / "train.json").exists():
        print(f"{arm.key}: done before, skipped", flush=True)
        return False
    data = directory / "data"
    if not data.exists():
        data.symlink_to(Path("..") / DATA / "data")
    if arm.source is not None and not (directory / DENSE_COPY).exists():
        # A copy, as README.md says: the arm's weights, whatever happens to the source later.
        source = ModelFiles.in_dir(workdir / arm.source / "models")
        partial = directory / f"{DENSE_COPY}.partial"  # renamed once both files are there
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for path in (source.weights, source.config):
            shutil.copy2(path, partial / path.name)
        partial.rename(directory / DENSE_COPY)
    run_stage(directory, "train", env)
    return True


# ----------------------------------------------------------------------------- curves
@dataclass(frozen=True)
class Curve:
    """An arm's validation losses against cumulative training FLOPs."""

    arm: Arm
    flops_per_token: float
    tokens_per_step: int
    offset: float  # training FLOPs before its step 0 (an upcycled arm's: the dense run's)
    steps: int
    points: list[tuple[float, float]]  # (cumulative training FLOPs, validation loss)

    @property
    def flops_per_step(self) -> float:
        return self.flops_per_token * self.tokens_per_step

    @property
    def end_flops(self) -> float:
        return self.offset + self.steps * self.flops_per_step


def value_at(points: Sequence[tuple[float, float]], flops: float) -> tuple[float, bool] | None:
    """``(loss, interpolated)`` of a curve at ``flops``: a logged point's own loss, else the
    linear interpolation between the two logged points around it; None outside the curve."""
    for x, y in points:
        if math.isclose(x, flops, rel_tol=SAME_FLOPS):
            return y, False
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if x0 < flops < x1:
            return y0 + (y1 - y0) * (flops - x0) / (x1 - x0), True
    return None


def tokens_per_step(params: Params) -> int:
    t = params.train
    world = t.runtime.world_size()
    if world is None:
        raise SystemExit("train.runtime.devices: auto: set the number of devices")
    return t.seq_len * t.micro_batch_size * t.grad_accum * world


def trained_accounting(directory: Path, seq_len: int) -> tuple[float, int]:
    """:func:`accounting` of the model an arm trained (``models/model_config.json``)."""
    from pipeline.model_io import read_model_config

    return accounting(*read_model_config(ModelFiles.in_dir(directory / "models")), seq_len)


def accounting(cfg: ModelConfig, vocab: int, seq_len: int) -> tuple[float, int]:
    """Training FLOPs per token and active parameters by the train stage's own accounting
    (the model built on the meta device: only the shapes count)."""
    import torch

    from pipeline.model import MoETransformer

    with torch.device("meta"):
        model = MoETransformer(cfg, vocab)
    return model.flops_per_token(seq_len), model.num_params()["active"]


def read_curves(workdir: Path, arms: Sequence[Arm]) -> dict[str, Curve]:
    """The curves of the arms that finished, by arm key."""
    curves: dict[str, Curve] = {}
    for arm in arms:
        directory = workdir / arm.key
        if not (directory / "metrics" / "train.json").exists():
            continue
        params = load_params(directory / "params.yaml")
        per_token, _ = trained_accounting(directory, params.train.seq_len)
        offset = curves[arm.source].end_flops if arm.source else 0.0
        per_step = per_token * tokens_per_step(params)
        with (directory / "plots" / "train" / "val.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        points = [(offset + int(r["step"]) * per_step, float(r["val_loss"])) for r in rows]
        steps = read_json(directory / "metrics" / "train.json")["steps"]
        curves[arm.key] = Curve(arm, per_token, tokens_per_step(params), offset, steps, points)
    return curves


def bits_per_byte(loss: float, bytes_per_token: float) -> float:
    return loss / math.log(2) / bytes_per_token


def validation_bytes_per_token(workdir: Path) -> float:
    return read_json(workdir / DATA / "metrics" / "tokenize.json")["validation"]["bytes_per_token"]


# ----------------------------------------------------------------------------- tables
def matched_table(curves: Sequence[Curve], bytes_per_token: float) -> str:
    """Markdown: at the end of each arm (rows, by FLOPs), every arm's validation loss and bits
    per byte: "(end)" where the arm ends there, † where interpolated, — where its curve does
    not reach."""
    header = ["training FLOPs", "the end of", *(c.arm.label for c in curves)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for at in sorted(curves, key=lambda c: c.end_flops):
        cells = [f"{at.end_flops:.3g}", at.arm.label]
        for curve in curves:
            found = value_at(curve.points, at.end_flops)
            if found is None:
                cells.append("—")
                continue
            loss, interpolated = found
            mark = " †" if interpolated else (" (end)" if curve is at else "")
            cells.append(f"{loss:.4f} / {bits_per_byte(loss, bytes_per_token):.4f}{mark}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(workdir: Path, curves: Sequence[Curve], bytes_per_token: float) -> str:
    header = ["arm", "steps", "active params", "training FLOPs/token", "FLOPs/step",
              "training FLOPs, cumulative", "val loss", "val bits/byte", "tokens/s", "MLflow run"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in curves:
        directory = workdir / c.arm.key
        params = load_params(directory / "params.yaml")
        _, active = trained_accounting(directory, params.train.seq_len)
        timing = read_json(directory / "metrics" / "train_timing.json")
        run_id = read_json(directory / "models" / "run.json")["run_id"]
        loss = c.points[-1][1]
        lines.append("| " + " | ".join([
            c.arm.label, str(c.steps), f"{active / 1e6:.2f} M", f"{c.flops_per_token / 1e6:.2f} M",
            f"{c.flops_per_step:.3g}", f"{c.end_flops:.3g}", f"{loss:.4f}",
            f"{bits_per_byte(loss, bytes_per_token):.4f}", f"{timing['tokens_per_s']:.0f}",
            f"`{run_id}`",
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


# ----------------------------------------------------------------------------- MLflow, plot
def log_flops_axis(workdir: Path, curve: Curve, bytes_per_token: float) -> None:
    """The arm's validation curve against cumulative training FLOPs (as the metric step) into
    its train run, and the arm's name as a tag and run name."""
    from mlflow.entities import Metric, RunTag
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import tracking_uri

    run_id = read_json(workdir / curve.arm.key / "models" / "run.json")["run_id"]
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, value, now, round(flops))
        for flops, loss in curve.points
        for key, value in (("flops/val_loss", loss),
                           ("flops/val_bits_per_byte", bits_per_byte(loss, bytes_per_token)))
    ]  # fmt: skip
    tags = [
        RunTag("bench.upcycling.arm", curve.arm.key),
        RunTag("bench.upcycling.train_flops_per_step", f"{curve.flops_per_step:.6g}"),
        RunTag("mlflow.runName", f"train-upcycling-{curve.arm.key}"),
    ]
    MlflowClient(tracking_uri()).log_batch(run_id, metrics=metrics, tags=tags)


def plot(workdir: Path, curves: Sequence[Curve], bytes_per_token: float, out: Path) -> None:
    """The validation curves on one FLOPs axis (bits per byte on the right), written to
    ``out`` and logged into each arm's run as ``upcycling/<name>``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import tracking_uri

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for curve in curves:
        xs = [x / 1e12 for x, _ in curve.points]
        ax.plot(xs, [y for _, y in curve.points], marker="o", markersize=3, label=curve.arm.label)
    ax.set_xlabel("training FLOPs (10^12)")
    ax.set_ylabel("validation loss (nats/token)")
    scale = math.log(2) * bytes_per_token
    ax.secondary_yaxis("right", functions=(lambda n: n / scale, lambda b: b * scale)).set_ylabel(
        "validation bits per byte"
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    client = MlflowClient(tracking_uri())
    for curve in curves:
        run_id = read_json(workdir / curve.arm.key / "models" / "run.json")["run_id"]
        client.log_artifact(run_id, str(out), "upcycling")
    print(f"wrote {out}; logged into the {len(curves)} runs as upcycling/{out.name}")


# ----------------------------------------------------------------------------- main
def run(args: argparse.Namespace, arms: Sequence[Arm]) -> None:
    base = base_settings(args.params, args.set)
    settings = {arm.key: arm_settings(base, arm, args.method) for arm in arms}
    validated(data_settings(base), DATA)  # every arm's params, before anything runs
    for key, flat in settings.items():
        validated(flat, key)
    if args.dry_run:
        for key, flat in settings.items():
            changed = {k: v for k, v in flat.items() if base.get(k) != v}
            print(f"{key}: {changed}")
        return
    from mlflow.tracking import MlflowClient

    from pipeline.tracking import experiment_name, tracking_uri, use_experiment

    # Created here (cwd: the repository) if missing, so its artifacts live beside mlflow.db.
    use_experiment(MlflowClient(tracking_uri()), experiment_name())
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / ".gitignore").write_text("*\n")  # run outputs, never committed
    env = stage_env()
    prepare_data(args.workdir, base, env)
    for arm in arms:
        if run_arm(args.workdir, arm, settings[arm.key], env):
            curve = read_curves(args.workdir, arms)[arm.key]
            log_flops_axis(args.workdir, curve, validation_bytes_per_token(args.workdir))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["run", "table", "plot"])
    parser.add_argument("--dense-steps", type=int, default=300, help="N (default 300)")
    parser.add_argument("--upcycled-steps", type=int, default=300, help="M (default 300)")
    parser.add_argument("--method", choices=["copy", "drop"], default="copy")
    parser.add_argument("--workdir", type=Path, default=WORKDIR)
    parser.add_argument("--params", type=Path, action="append", default=[],
                        help="run: a YAML file of params keys over the preset's")  # fmt: skip
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="run: one params key, after --params")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="run: print each arm's keys")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "upcycling.png")
    args = parser.parse_args()
    args.workdir, args.out = args.workdir.resolve(), args.out.resolve()
    args.params = [path.resolve() for path in args.params]
    os.chdir(ROOT)  # the MLflow store's default location is the repository's
    arms = plan(args.dense_steps, args.upcycled_steps, args.method)
    if args.action == "run":
        run(args, arms)
        return
    curves = list(read_curves(args.workdir, arms).values())
    if not curves:
        raise SystemExit(f"{args.workdir}: no finished arm; run `python bench/upcycling.py run`")
    bytes_per_token = validation_bytes_per_token(args.workdir)
    if args.action == "table":
        print(summary_table(args.workdir, curves, bytes_per_token))
        print()
        print(matched_table(curves, bytes_per_token))
    else:
        plot(args.workdir, curves, bytes_per_token, args.out)


if __name__ == "__main__":
    main()
