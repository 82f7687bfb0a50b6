"""MoE kernel and layer benchmark: reference / torch / triton backends, against measured peaks.

Prints one row per (shape, what): median time of forward+backward (or of the op alone for the
data-movement kernels), achieved TFLOP/s or GB/s, their fraction of the peaks measured in the
same run (a large matmul, a large copy), and the peak memory above the resting state; then a
summary of the issue's targets on the last shape (triton ≥ 1.3× torch, ≥ 50 % of the matmul
peak), with the speed-ups as the median of per-rotation ratios and their lower quartile.

Rows: the expert layer (routed SwiGLU experts on fixed routing) of each backend and, when
transformers is installed, of its ``MixtralSparseMoeBlock`` experts under each experts
implementation that runs offline at the shape (``eager``, ``grouped_mm``; ``batched_mm`` copies
the weights once per assignment, a TiB at the large shape; ``deepgemm``/``sonicmoe`` download
kernels from the Hub), on the same weights (outputs checked against the ``torch`` backend's
first); the triton data-movement kernels; the router forward+backward (logits → top-k weights
and probabilities) fused in Triton and in PyTorch. The layer rows run in rotation
(:func:`timing.rotation`: warm-ups, then every implementation once per rotation).

    python bench/moe_kernels.py                       # CUDA: the MoE issue's shapes + a large one
    python bench/moe_kernels.py --shapes large --json out.json   # what bench/gpu_check.sh runs
    python bench/moe_kernels.py --quick               # CPU: tiny shapes, triton under the interpreter

On CPU the triton rows time the Triton INTERPRETER (numpy, one program at a time): they check
that the path runs, not its speed. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from timing import ratio, rotation, synchronizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.train.metrics import measure_peak_flops  # noqa: E402 (after the path)


@dataclass(frozen=True)
class Shape:
    name: str
    tokens: int
    hidden: int
    experts: int
    top_k: int
    expert_hidden: int

    def layer_flops(self) -> float:
        """Forward + backward of the routed SwiGLU experts: 3 × (2·T·k·3·H·I)."""
        return 3 * 2 * self.tokens * self.top_k * 3 * self.hidden * self.expert_hidden


FULL = [
    Shape("moe-E8k2", 4096, 512, 8, 2, 1024),
    Shape("moe-E64k8-fine", 4096, 512, 64, 8, 128),
    Shape("large", 16384, 2048, 64, 8, 1024),  # the GPU acceptance shape (bench/gpu_check.sh)
]
QUICK = [Shape("quick", 256, 64, 8, 2, 64)]
HF_IMPLEMENTATIONS = ("eager", "grouped_mm")  # those that run offline at every shape here


def median_seconds(call: Callable[[], object], device: torch.device, reps: int) -> float:
    return statistics.median(rotation({"call": call}, reps, 2, synchronizer(device))["call"])


def measure_peaks(device: torch.device, dtype: torch.dtype, quick: bool) -> tuple[float, float]:
    """(matmul FLOP/s, copy bytes/s) measured now, on this device; the matmul timed until
    stable (:func:`pipeline.train.metrics.measure_peak_flops`, at most 8192³)."""
    flops = measure_peak_flops(device, dtype, max_size=1024 if quick else 8192)
    reps = 3 if quick else 10
    src = torch.empty(2**24 if quick else 2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / median_seconds(lambda: dst.copy_(src), device, reps)
    return flops, bandwidth


def layer_inputs(s: Shape, device: torch.device, dtype: torch.dtype, seed: int = 0) -> dict:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()

    weights, ids = torch.randn(s.tokens, s.experts, generator=g).softmax(-1).topk(s.top_k, dim=-1)
    h, i = s.hidden, s.expert_hidden
    return {
        "x": leaf(s.tokens, h),
        "weights": weights.to(device).requires_grad_(),
        "ids": ids.to(device),
        "w13": leaf(s.experts, 2 * i, h, scale=h**-0.5),
        "w2": leaf(s.experts, h, i, scale=i**-0.5),
    }


def routed(backend: str, p: dict) -> torch.Tensor:
    """dispatch → experts → combine on ``p``'s routing, all experts on this device."""
    from pipeline.model.dispatch import LocalDispatcher
    from pipeline.model.moe import routed_experts

    args = [p[n] for n in ("x", "weights", "ids", "w13", "w2")]
    return routed_experts(LocalDispatcher(p["w13"].shape[0]), *args, backend)


def layer_step(backend: str, p: dict) -> Callable[[], None]:
    leaves = [p[n] for n in ("x", "weights", "w13", "w2")]
    grad = torch.randn_like(p["x"])

    def step() -> None:
        torch.autograd.grad(routed(backend, p), leaves, grad)

    return step


def kernel_steps(s: Shape, p: dict) -> dict[str, tuple[Callable[[], object], float]]:
    """The triton data-movement ops alone: name -> (call, bytes moved)."""
    from pipeline.ops.triton_dispatch import combine, group_by_expert, spread

    x, ids, w = p["x"].detach(), p["ids"], p["weights"].detach().to(p["x"].dtype)
    row_TK = group_by_expert(ids, s.experts)[0]
    rows = s.tokens * s.top_k
    moved = 2 * rows * s.hidden * x.element_size()
    xs = spread(x, row_TK, rows, None)
    return {
        "group_by_expert": (
            lambda: group_by_expert(ids, s.experts),
            ids.numel() * (ids.element_size() + 8),
        ),
        "spread": (lambda: spread(x, row_TK, rows, None), moved),
        "combine": (lambda: combine(xs, row_TK, w), moved),
    }


def hf_step(s: Shape, p: dict, implementation: str) -> Callable[[], None]:
    """transformers' Mixtral experts (``gate_up_proj (E, 2I, H)`` is our ``w13``, ``down_proj``
    our ``w2``) under ``implementation``, on ``p``'s weights and routing; its output is checked
    against the ``torch`` backend's first."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=s.hidden, intermediate_size=s.expert_hidden,
                        num_local_experts=s.experts, num_experts_per_tok=s.top_k,
                        experts_implementation=implementation)  # fmt: skip
    x = p["x"].detach().requires_grad_()
    with torch.device(x.device):  # built in place: the large shape's experts hold 1.5 G values
        experts = MixtralSparseMoeBlock(cfg).experts.to(x.dtype)
    with torch.no_grad():
        experts.gate_up_proj.copy_(p["w13"])
        experts.down_proj.copy_(p["w2"])
    weights = p["weights"].detach().to(x.dtype).requires_grad_()
    with torch.no_grad():
        y = experts(x, p["ids"], weights).float()
        ours = routed("torch", p)
        err = ((y - ours.float()).norm() / ours.float().norm()).item()
    if err > 2e-2:
        raise AssertionError(f"transformers {implementation} experts differ from ours: {err:.2e}")
    grad = torch.randn_like(x)
    leaves = [x, weights, experts.gate_up_proj, experts.down_proj]

    def step() -> None:
        torch.autograd.grad(experts(x, p["ids"], weights), leaves, grad)

    return step


def router_steps(s: Shape, device: torch.device) -> dict[str, tuple[Callable[[], object], float]]:
    """Router forward+backward on fp32 logits, fused and PyTorch: name -> (call, bytes moved).

    Bytes: the fused kernels' minimum traffic: forward reads the logits and writes the
    probabilities and the k weights and ids; backward reads logits, ids, both gradients and
    writes the logits' gradient."""
    from pipeline.model.router import _softmax_topk
    from pipeline.ops.triton_routing import fused_route

    g = torch.Generator().manual_seed(2)
    logits = torch.randn(s.tokens, s.experts, generator=g).to(device).requires_grad_()
    d_w = torch.randn(s.tokens, s.top_k, generator=g).to(device)
    d_p = torch.randn(s.tokens, s.experts, generator=g).to(device)
    te, tk = s.tokens * s.experts * 4, s.tokens * s.top_k
    moved = 2 * te + tk * 12 + 3 * te + tk * 12

    def fused() -> None:
        w, _, probs, *_ = fused_route(logits, s.top_k, "softmax", True, None)
        torch.autograd.grad([w, probs], logits, [d_w, d_p])

    def plain() -> None:
        r = _softmax_topk(logits, s.top_k, True)
        torch.autograd.grad([r.weights_TK, r.probs_TE], logits, [d_w, d_p])

    return {"router fused": (fused, moved), "router pytorch": (plain, moved)}


def step_memory(call: Callable[[], object], device: torch.device) -> str:
    """Peak memory one call allocates above what was resident before it."""
    if device.type != "cuda":
        return "n/a"
    torch.cuda.synchronize(device)
    resting = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    call()
    torch.cuda.synchronize(device)
    return f"{(torch.cuda.max_memory_allocated(device) - resting) / 2**30:.2f} GiB"


def layer_steps(s: Shape, p: dict) -> dict[str, Callable[[], None]]:
    steps = {backend: layer_step(backend, p) for backend in ("torch", "triton")}
    if s.name != "large":
        steps["reference"] = layer_step("reference", p)
    if importlib.util.find_spec("transformers") is not None:
        for implementation in HF_IMPLEMENTATIONS:
            steps[f"hf-{implementation}"] = hf_step(s, p, implementation)
    return steps


def run(args: argparse.Namespace) -> tuple[list[dict], dict[str, list[float]], float]:
    """Rows of every shape; the last shape's per-rotation layer times; the matmul peak."""
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    flops_peak, bw_peak = measure_peaks(device, dtype, args.quick)
    print(f"# device {device}, {dtype}; measured peaks: matmul {flops_peak / 1e12:.2f} TFLOP/s, "
          f"copy {bw_peak / 1e9:.1f} GB/s")  # fmt: skip
    rows, times = [], {}
    shapes = QUICK if args.quick else [s for s in FULL if s.name in args.shapes]
    for s in shapes:
        first = len(rows)
        p = layer_inputs(s, device, dtype)
        steps = layer_steps(s, p)
        times = rotation(steps, args.reps, args.warmups, synchronizer(device))
        for name, step in steps.items():
            sec = statistics.median(times[name])
            tflops = s.layer_flops() / sec / 1e12
            rows.append({"shape": s.name, "what": f"layer fwd+bwd {name}", "ms": sec * 1e3,
                         "rate": f"{tflops:.2f} TFLOP/s", "of_peak": tflops * 1e12 / flops_peak,
                         "mem": step_memory(step, device), "impl": name})  # fmt: skip
        for name, (call, moved) in {**kernel_steps(s, p), **router_steps(s, device)}.items():
            sec = median_seconds(call, device, args.reps)
            rows.append({"shape": s.name, "what": f"kernel {name}", "ms": sec * 1e3,
                         "rate": f"{moved / sec / 1e9:.1f} GB/s", "of_peak": moved / sec / bw_peak,
                         "mem": step_memory(call, device)})  # fmt: skip
        for r in rows[first:]:
            print(f"{r['shape']:<16} {r['what']:<28} {r['ms']:>10.2f} ms {r['rate']:>16} "
                  f"{100 * r['of_peak']:>6.1f}% of peak  mem {r['mem']}")  # fmt: skip
    return rows, times, flops_peak


def summary(rows: list[dict], times: dict[str, list[float]], flops_peak: float) -> dict:
    """The issue's targets on the last shape, printed and returned (``--json``)."""
    last = rows[-1]["shape"]
    by = {r["impl"]: r for r in rows if r["shape"] == last and "impl" in r}
    vs_torch = ratio(times["torch"], times["triton"])
    frac = by["triton"]["of_peak"]
    out = {
        "shape": last,
        "matmul_peak_tflops": flops_peak / 1e12,
        "triton_ms": by["triton"]["ms"],
        "torch_ms": by["torch"]["ms"],
        "triton_over_torch": vs_torch,
        "triton_of_matmul_peak": frac,
        "rotations": len(times["triton"]),
        "memory": {name: r["mem"] for name, r in by.items()},
    }
    print(f"\n## summary ({last}; speed-ups: median of {out['rotations']} per-rotation ratios, "
          "lower quartile in brackets)")  # fmt: skip
    print("| target | measured | met |\n|---|---|---|")
    met = "yes" if vs_torch[0] >= 1.3 else "NO"
    print(
        f"| triton ≥ 1.3× torch (layer fwd+bwd) | {vs_torch[0]:.2f}× [{vs_torch[1]:.2f}×] | {met} |"
    )
    met = "yes" if frac >= 0.5 else "NO"
    print(f"| triton ≥ 50 % of the matmul peak | {100 * frac:.1f} % | {met} |")
    hf = [name for name in by if name.startswith("hf-")]
    if hf:
        best = min(hf, key=lambda name: by[name]["ms"])
        vs_hf = ratio(times[best], times["triton"])
        out.update(hf_best=best, triton_over_hf_best=vs_hf, hf_best_ms=by[best]["ms"])
        print(f"| triton vs transformers' fastest ({best}; no target) | {vs_hf[0]:.2f}× "
              f"[{vs_hf[1]:.2f}×] | - |")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU shapes (interpreter)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--shapes", nargs="+", default=[s.name for s in FULL],
                        choices=[s.name for s in FULL])  # fmt: skip
    parser.add_argument("--reps", type=int, default=None, help="timed rotations (default 7)")
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the summary here")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
        args.quick = True
        torch.set_num_threads(1)  # tiny shapes; avoids OpenMP stalls on a shared CPU
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.reps = args.reps or (3 if args.quick else 7)
    result = summary(*run(args))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
