"""The steps of the GPU acceptance (``bench/gpu_check.sh`` runs them, each under a timeout), and the
one summary table it ends with. Each step prints what it measured and writes it as JSON.

    python bench/gpu_steps.py install    --out install.json
    python bench/gpu_steps.py self-check --out self_check.json
    python bench/gpu_steps.py train-step --out train_step.json     # --quick: tiny, for a CPU
    python bench/gpu_steps.py pipeline   --out pipeline.json       # --device cpu: smoke run
    python bench/gpu_steps.py summary DIR    # the table, from DIR/*.json and DIR/tests.log

- ``install``: the packages the GPU path needs, importable and consistent (``pip check``), the
  device, its bf16 support.
- ``self-check``: :func:`pipeline.model.backends.run_self_check` on the GPU in fp32 and bf16
  (the first run of each includes compiling the kernels at the check's shapes; the second is
  the check's own cost).
- ``train-step``: tokens/s, MFU and peak step memory of a ~100 M-active MoE transformer in
  bf16-mixed (fp32 weights and AdamW, autocast), one optimizer step per call, the ``triton``
  and ``torch`` backends in rotation on the same weights and batch. MFU: against the GPU's
  datasheet dense bf16 peak when :data:`pipeline.train.metrics.DATASHEET_BF16_PEAKS` knows the
  device, else a matmul measured here; the output says which.
- ``pipeline``: every stage of ``dvc.yaml`` (via ``bench/pipeline_stages.py``) in a scratch copy
  of the project, with the end-to-end tests' tiny params (``tests/e2e/conftest.py``) on the GPU:
  ``train.runtime.accelerator=gpu``, ``precision=bf16-mixed``, MFU against the datasheet.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from timing import ratio, rotation, synchronizer

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The targets for the triton layer at the large shape (bench/moe_kernels.py).
TARGET_SPEEDUP = 1.3
TARGET_PEAK_FRACTION = 0.5
PACKAGES = ("torch", "triton", "lightning", "transformers", "mlflow", "dvc", "lm_eval")


def write(out: Path | None, result: dict) -> None:
    if out is not None:
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")


# --------------------------------------------------------------------------- install
def install(args: argparse.Namespace) -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    pip = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    cuda = torch.cuda.is_available()
    result = {
        "versions": versions,
        "pip_check": (pip.stdout + pip.stderr).strip().splitlines()[-1:] or [""],
        "pip_check_ok": pip.returncode == 0,
        "device": torch.cuda.get_device_name() if cuda else None,
        "capability": torch.cuda.get_device_capability() if cuda else None,
        "torch_cuda": torch.version.cuda,
        "bf16": cuda and torch.cuda.is_bf16_supported(),
        "pipeline_imports": importlib.util.find_spec("pipeline.ops.triton_experts") is not None,
    }
    missing = [name for name, version in versions.items() if version is None]
    result["ok"] = bool(cuda and result["bf16"] and not missing and result["pipeline_imports"])
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


# --------------------------------------------------------------------------- self-check
def self_check(args: argparse.Namespace) -> dict:
    from pipeline.model.backends import CHECK_SHAPE, run_self_check

    device = torch.device(args.device)
    sync = synchronizer(device)
    result = {}
    for dtype in (torch.float32, torch.bfloat16):
        seconds = []
        for _ in range(2):  # the first includes compiling the kernels at the check's shapes
            sync()
            start = time.perf_counter()
            check = run_self_check(device, dtype, CHECK_SHAPE)
            sync()
            seconds.append(time.perf_counter() - start)
        name = str(dtype).removeprefix("torch.")
        result[name] = {"passed": check.passed, "summary": check.summary(),
                        "first_s": seconds[0], "warm_s": seconds[1]}  # fmt: skip
        print(f"{name}: {check.summary()}\n  {seconds[0]:.2f} s first, {seconds[1]:.3f} s warm")
    return result


# --------------------------------------------------------------------------- train step
def train_model(quick: bool):
    """``(TrainConfig, ModelConfig, vocab)``: a ~100 M-active MoE transformer (or a tiny one)."""
    from pipeline.config import ModelConfig, MoEConfig, TrainConfig

    if quick:
        model = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, dense_hidden=128,
                            max_seq_len=64, moe=MoEConfig(num_experts=8, top_k=2, expert_hidden=64))  # fmt: skip
        return TrainConfig(model=model, seq_len=64, micro_batch_size=2), model, 512
    model = ModelConfig(
        d_model=768, n_layers=12, n_heads=12, n_kv_heads=4, dense_hidden=2048, max_seq_len=2048,
        moe=MoEConfig(num_experts=32, top_k=4, expert_hidden=512),
    )  # fmt: skip
    return TrainConfig(model=model, seq_len=2048, micro_batch_size=8), model, 32768


def train_step(args: argparse.Namespace) -> dict:
    from train_throughput import Stepper

    from pipeline.train.metrics import peak_flops

    device = torch.device(args.device)
    cfg, model_cfg, vocab = train_model(args.quick)
    autocast = torch.bfloat16 if device.type == "cuda" else None  # bf16-mixed on the GPU
    steppers = {
        backend: Stepper(cfg, model_cfg, vocab, device=device, backend=backend, autocast=autocast)
        for backend in ("triton", "torch")
    }
    sync = synchronizer(device)
    times = rotation({b: s.step for b, s in steppers.items()}, args.reps, args.warmups, sync)
    peak, source = peak_flops(device, autocast or torch.float32)
    some = steppers["torch"]
    result = {
        "params": some.params,
        "tokens_per_step": some.tokens_per_step,
        "flops_per_token": some.flops_per_token,
        "peak_flops": peak,
        "peak_source": source,
        "rotations": args.reps,
        "triton_over_torch": ratio(times["torch"], times["triton"]),
    }
    for backend, stepper in steppers.items():
        tokens_per_s = stepper.tokens_per_step / statistics.median(times[backend])
        result[backend] = {
            "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * stepper.flops_per_token / peak,
            "step_peak_gib": step_peak_gib(stepper.step, device),
        }
    print(
        f"model: {some.params['active'] / 1e6:.1f} M active, {some.params['total'] / 1e6:.1f} M "
        f"total; {some.tokens_per_step} tokens per step; peak {peak / 1e12:.1f} TFLOP/s ({source})"
    )
    for backend in steppers:
        r = result[backend]
        print(f"{backend}: {r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f} %, "
              f"step peak {r['step_peak_gib']} GiB above resting")  # fmt: skip
    med, low = result["triton_over_torch"]
    print(f"triton / torch tokens/s: {med:.2f}x (lower quartile {low:.2f}x, {args.reps} rotations)")
    return result


def step_peak_gib(step, device: torch.device) -> float | None:
    """Memory one optimizer step allocates above what was resident before it (CUDA only)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    resting = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return round((torch.cuda.max_memory_allocated(device) - resting) / 2**30, 2)


# --------------------------------------------------------------------------- pipeline
def tiny_pipeline_params(device: str) -> dict:
    """params.yaml with the end-to-end tests' tiny params (merged as the tests merge them), on
    ``device``."""
    tests, e2e = _module(REPO / "tests/conftest.py"), _module(REPO / "tests/e2e/conftest.py")
    gpu = device == "cuda"
    runtime = {
        "accelerator": "gpu" if gpu else "cpu",
        "precision": "bf16-mixed" if gpu else "32-true",
    }
    override = {"train": {"runtime": runtime, "monitor": {"peak_flops": None}}}
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return tests.merge(tests.merge(params, e2e.TINY_PIPELINE), override)


def _module(path: Path):
    """A test-support module by path (the tests directory is not a package)."""
    spec = importlib.util.spec_from_file_location(f"gpu_steps_{path.parent.name}", path)
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # for its dataclasses
    spec.loader.exec_module(module)
    return module


def pipeline(args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-pipeline-") as tmp:
        scratch = Path(tmp)
        for package in ("pipeline", "stages", "evaluation"):
            shutil.copytree(REPO / package, scratch / package, ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        shutil.copy(REPO / "dvc.yaml", scratch)
        (scratch / "params.yaml").write_text(yaml.safe_dump(tiny_pipeline_params(args.device)))
        env = {"MLFLOW_TRACKING_URI": f"sqlite:///{scratch / 'mlflow.db'}", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "DVC_NO_ANALYTICS": "1"}  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(REPO / "bench/pipeline_stages.py")],
            cwd=scratch, env={**os.environ, **env}, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.perf_counter() - start
        print(done.stdout[-4000:], done.stderr[-3000:] if done.returncode else "", sep="\n")
        metrics = {}  # what training computed, and what it measured (kept apart by the stage)
        for name in ("metrics/train.json", "metrics/train_timing.json"):
            if (scratch / name).is_file():
                metrics |= json.loads((scratch / name).read_text())
        keep = ("tokens_per_s", "mfu", "peak_flops_source", "moe_backend_check", "val_loss")
        result = {"rc": done.returncode, "seconds": seconds,
                  "train": {k: metrics.get(k) for k in keep},
                  "stages": [line for line in done.stdout.splitlines() if line.startswith("| ")]}  # fmt: skip
    for key, value in result["train"].items():
        print(f"train {key}: {value}")
    return result


# --------------------------------------------------------------------------- summary
def _load(directory: Path, name: str) -> dict | None:
    path = directory / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _tests_line(directory: Path) -> str:
    path = directory / "tests.log"
    if not path.is_file():
        return "did not run"
    lines = [ln for ln in path.read_text().splitlines() if " passed" in ln or " failed" in ln]
    return lines[-1].strip("= ") if lines else "no result line (timed out?)"


def summary(args: argparse.Namespace) -> dict:
    """One table: each step's outcome, and the layer against the issue's targets."""
    d = args.directory
    rows = []
    inst = _load(d, "install")
    rows.append(("install", "ok" if inst and inst["ok"] else "FAILED or did not run", "-"))
    rows.append(("gpu tests (fp32 + bf16)", _tests_line(d), "-"))
    check = _load(d, "self_check") or {}
    for dtype in ("float32", "bfloat16"):
        c = check.get(dtype)
        text = f"{c['summary']}; {c['warm_s']:.2f} s warm" if c else "did not run"
        rows.append((f"self-check {dtype}", text, "-"))
    layer = _load(d, "moe_kernels")
    if layer:
        med, low = layer["triton_over_torch"]
        frac = layer["triton_of_matmul_peak"]
        rows.append((f"triton layer vs torch ({layer['shape']}, fwd+bwd)",
                     f"{med:.2f}x [lower quartile {low:.2f}x]",
                     f"≥ {TARGET_SPEEDUP}x: {'met' if med >= TARGET_SPEEDUP else 'NOT met'}"))  # fmt: skip
        rows.append((f"triton layer of the bf16 matmul peak ({layer['matmul_peak_tflops']:.0f} TFLOP/s measured)",
                     f"{100 * frac:.1f} %",
                     f"≥ {100 * TARGET_PEAK_FRACTION:.0f} %: {'met' if frac >= TARGET_PEAK_FRACTION else 'NOT met'}"))  # fmt: skip
        if "hf_best" in layer:
            med, low = layer["triton_over_hf_best"]
            rows.append((f"triton layer vs transformers {layer['hf_best']}",
                         f"{med:.2f}x [{low:.2f}x]", "-"))  # fmt: skip
        rows.append(("layer step memory above resting", json.dumps(layer["memory"]), "-"))
    else:
        rows.append(("triton layer vs torch", "did not run", f"≥ {TARGET_SPEEDUP}x: unmeasured"))
    train = _load(d, "train_step")
    if train:
        for backend in ("triton", "torch"):
            r = train[backend]
            rows.append((f"train step {backend} ({train['params']['active'] / 1e6:.0f} M active, bf16-mixed)",
                         f"{r['tokens_per_s']:,.0f} tokens/s, MFU {100 * r['mfu']:.1f} % "
                         f"({train['peak_source']}), step peak {r['step_peak_gib']} GiB", "-"))  # fmt: skip
    else:
        rows.append(("train step", "did not run", "-"))
    pipe = _load(d, "pipeline")
    if pipe:
        t = pipe["train"]
        rows.append(("tiny pipeline on the GPU", f"rc {pipe['rc']}, {pipe['seconds']:.0f} s; "
                     f"train {t['tokens_per_s']} tokens/s, backend check: {t['moe_backend_check']}", "-"))  # fmt: skip
    else:
        rows.append(("tiny pipeline on the GPU", "did not run", "-"))
    print("\n## gpu_check summary")
    print("| step | measured | target |\n|---|---|---|")
    for step, measured, target in rows:
        print(f"| {step} | {measured} | {target} |")
    return {"rows": rows}


STEPS = {"install": install, "self-check": self_check, "train-step": train_step,
         "pipeline": pipeline, "summary": summary}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=list(STEPS))
    parser.add_argument("directory", nargs="?", type=Path, help="summary: the step outputs")
    parser.add_argument("--out", type=Path, help="write the step's result here as JSON")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="train-step: a tiny model")
    parser.add_argument("--reps", type=int, default=7, help="train-step: timed rotations")
    parser.add_argument("--warmups", type=int, default=2)
    args = parser.parse_args()
    if args.device == "cpu":  # a smoke run: the kernels under the interpreter
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
    write(args.out, STEPS[args.step](args))


if __name__ == "__main__":
    main()
