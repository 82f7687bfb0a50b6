"""MoE kernel and layer benchmark: reference / torch / triton backends, against measured peaks.

Prints one row per (shape, what): median time of forward+backward (or of the op alone for the
data-movement kernels), achieved TFLOP/s or GB/s, their fraction of the peaks measured in the
same run (a large matmul, a large copy), and peak memory; then a summary of the issue's targets
on the largest shape (triton ≥ 1.3× torch, ≥ 50 % of the matmul peak).

Rows: the expert layer (routed SwiGLU experts on fixed routing) of each backend and, when
transformers is installed, of its ``MixtralSparseMoeBlock`` experts with
``experts_implementation="grouped_mm"`` on the same weights (its output is checked against the
``torch`` backend's first); the triton data-movement kernels; the router forward+backward
(logits → top-k weights and probabilities) fused in Triton and in PyTorch.

    python bench/moe_kernels.py                 # CUDA: the MoE issue's shapes + a large one
    python bench/moe_kernels.py --quick         # CPU: tiny shapes, triton under the interpreter

On CPU the triton rows time the Triton INTERPRETER (numpy, one program at a time): they check
that the path runs, not its speed. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    Shape("large", 16384, 2048, 64, 8, 1024),
]
QUICK = [Shape("quick", 256, 64, 8, 2, 64)]


def timed(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_peaks(device: torch.device, dtype: torch.dtype, quick: bool) -> tuple[float, float]:
    """(matmul FLOP/s, copy bytes/s) measured now, on this device."""
    n = 1024 if quick else 8192
    a, b = (
        torch.randn(n, n, device=device, dtype=dtype),
        torch.randn(n, n, device=device, dtype=dtype),
    )
    flops = 2 * n**3 / timed(lambda: a @ b, device, 3 if quick else 10)
    src = torch.empty(2**24 if quick else 2**30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    bandwidth = 2 * src.numel() / timed(lambda: dst.copy_(src), device, 3 if quick else 10)
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
        "w1": leaf(s.experts, i, h, scale=h**-0.5),
        "w3": leaf(s.experts, i, h, scale=h**-0.5),
        "w2": leaf(s.experts, h, i, scale=i**-0.5),
    }


def routed(backend: str, p: dict) -> torch.Tensor:
    """dispatch → experts → combine on ``p``'s routing, all experts on this device."""
    from pipeline.model.dispatch import LocalDispatcher
    from pipeline.model.moe import routed_experts

    args = [p[n] for n in ("x", "weights", "ids", "w1", "w3", "w2")]
    return routed_experts(LocalDispatcher(p["w1"].shape[0]), *args, backend)


def layer_step(backend: str, p: dict) -> Callable[[], None]:
    leaves = [p[n] for n in ("x", "weights", "w1", "w3", "w2")]
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


def hf_grouped_mm_step(s: Shape, p: dict) -> Callable[[], None]:
    """transformers' Mixtral experts (``gate_up_proj (E, 2I, H) = [w1; w3]``, ``down_proj = w2``)
    with the grouped_mm implementation, on ``p``'s weights and routing; its output is checked
    against the ``torch`` backend's first."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=s.hidden, intermediate_size=s.expert_hidden,
                        num_local_experts=s.experts, num_experts_per_tok=s.top_k,
                        experts_implementation="grouped_mm")  # fmt: skip
    x = p["x"].detach().requires_grad_()
    with torch.device(x.device):  # built in place: the large shape's experts hold 1.5 G values
        experts = MixtralSparseMoeBlock(cfg).experts.to(x.dtype)
    with torch.no_grad():
        experts.gate_up_proj.copy_(torch.cat([p["w1"], p["w3"]], dim=1))
        experts.down_proj.copy_(p["w2"])
    weights = p["weights"].detach().to(x.dtype).requires_grad_()
    with torch.no_grad():
        y = experts(x, p["ids"], weights).float()
        ours = routed("torch", p)
        err = ((y - ours.float()).norm() / ours.float().norm()).item()
    if err > 2e-2:
        raise AssertionError(f"transformers grouped_mm experts differ from ours: {err:.2e}")
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


def peak_memory(device: torch.device) -> str:
    if device.type != "cuda":
        return "n/a"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"


def run(args: argparse.Namespace) -> list[dict]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    flops_peak, bw_peak = measure_peaks(device, dtype, args.quick)
    print(f"# device {device}, {dtype}; measured peaks: matmul {flops_peak / 1e12:.2f} TFLOP/s, "
          f"copy {bw_peak / 1e9:.1f} GB/s")  # fmt: skip
    rows = []
    for s in QUICK if args.quick else FULL:
        first = len(rows)
        p = layer_inputs(s, device, dtype)
        backends = ["torch", "triton"] + (["reference"] if s.name != "large" else [])
        steps = {backend: layer_step(backend, p) for backend in backends}
        if importlib.util.find_spec("transformers") is not None:
            steps["hf-grouped_mm"] = hf_grouped_mm_step(s, p)
        for backend, step in steps.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec = timed(step, device, args.iters)
            tflops = s.layer_flops() / sec / 1e12
            rows.append({"shape": s.name, "what": f"layer fwd+bwd {backend}", "ms": sec * 1e3,
                         "rate": f"{tflops:.2f} TFLOP/s", "of_peak": tflops * 1e12 / flops_peak,
                         "mem": peak_memory(device), "tflops": tflops, "backend": backend})  # fmt: skip
        for name, (call, moved) in {**kernel_steps(s, p), **router_steps(s, device)}.items():
            sec = timed(call, device, args.iters)
            rows.append({"shape": s.name, "what": f"kernel {name}", "ms": sec * 1e3,
                         "rate": f"{moved / sec / 1e9:.1f} GB/s", "of_peak": moved / sec / bw_peak,
                         "mem": peak_memory(device)})  # fmt: skip
        for r in rows[first:]:
            print(f"{r['shape']:<16} {r['what']:<28} {r['ms']:>10.2f} ms {r['rate']:>16} "
                  f"{100 * r['of_peak']:>6.1f}% of peak  mem {r['mem']}")  # fmt: skip
    return rows


def summary(rows: list[dict]) -> None:
    """The issue's targets, on the last (largest) shape."""
    last = rows[-1]["shape"]
    by = {r["backend"]: r for r in rows if r["shape"] == last and "backend" in r}
    speedup = by["torch"]["ms"] / by["triton"]["ms"]
    frac = by["triton"]["of_peak"]
    print(f"\n## summary ({last})")
    print("| target | measured | met |\n|---|---|---|")
    print(
        f"| triton ≥ 1.3× torch (layer fwd+bwd) | {speedup:.2f}× | {'yes' if speedup >= 1.3 else 'NO'} |"
    )
    print(
        f"| triton ≥ 50 % of matmul peak | {100 * frac:.1f} % | {'yes' if frac >= 0.5 else 'NO'} |"
    )
    if "hf-grouped_mm" in by:
        vs_hf = by["hf-grouped_mm"]["ms"] / by["triton"]["ms"]
        print(f"| triton vs transformers grouped_mm (no target) | {vs_hf:.2f}× | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny CPU shapes (interpreter)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--iters", type=int, default=None)
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before any kernel module is imported
        args.quick = True
        torch.set_num_threads(1)  # tiny shapes; avoids OpenMP stalls on a shared CPU
    args.dtype = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    args.iters = args.iters or (3 if args.quick else 20)
    summary(run(args))


if __name__ == "__main__":
    main()
