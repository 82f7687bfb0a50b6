"""MoE kernel and layer benchmark: reference / torch / triton backends, against measured peaks.

Prints one row per (shape, what): median time of forward+backward (or of the op alone for the
data-movement kernels), achieved TFLOP/s or GB/s, their fraction of the peaks measured in the
same run (a large matmul, a large copy), and peak memory; then a summary of the issue's targets
on the largest shape (triton ≥ 1.3× torch, ≥ 50 % of the matmul peak).

    python bench/moe_kernels.py                 # CUDA: the MoE issue's shapes + a large one
    python bench/moe_kernels.py --quick         # CPU: tiny shapes, triton under the interpreter

On CPU the triton rows time the Triton INTERPRETER (numpy, one program at a time): they check
that the path runs, not its speed. Timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
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


def layer_step(backend: str, p: dict) -> Callable[[], None]:
    from pipeline.ops import get_backend

    fn = get_backend(backend)
    args = [p[n] for n in ("x", "weights", "ids", "w1", "w3", "w2")]
    grad = torch.randn_like(p["x"])

    def step() -> None:
        y = fn(*args)
        torch.autograd.grad(y, [args[0], args[1], *args[3:]], grad)

    return step


def kernel_steps(s: Shape, p: dict) -> dict[str, tuple[Callable[[], object], float]]:
    """The triton data-movement ops alone: name -> (call, bytes moved)."""
    from pipeline.ops.triton_rows import assign_rows, gather_sum, scatter_rows

    x, ids, w = p["x"].detach(), p["ids"], p["weights"].detach().to(p["x"].dtype)
    row_TK = assign_rows(ids, s.experts, -1)[0]
    rows = s.tokens * s.top_k
    moved = 2 * rows * s.hidden * x.element_size()
    xs = scatter_rows(x, row_TK, rows, None)
    return {
        "assign_rows": (
            lambda: assign_rows(ids, s.experts, -1),
            ids.numel() * (ids.element_size() + 8),
        ),
        "permute": (lambda: scatter_rows(x, row_TK, rows, None), moved),
        "combine": (lambda: gather_sum(xs, row_TK, w), moved),
    }


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
        p = layer_inputs(s, device, dtype)
        backends = ["torch", "triton"] + (["reference"] if s.name != "large" else [])
        for backend in backends:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sec = timed(layer_step(backend, p), device, args.iters)
            tflops = s.layer_flops() / sec / 1e12
            rows.append({"shape": s.name, "what": f"layer fwd+bwd {backend}", "ms": sec * 1e3,
                         "rate": f"{tflops:.2f} TFLOP/s", "of_peak": tflops * 1e12 / flops_peak,
                         "mem": peak_memory(device), "tflops": tflops, "backend": backend})  # fmt: skip
        for name, (call, moved) in kernel_steps(s, p).items():
            sec = timed(call, device, args.iters)
            rows.append({"shape": s.name, "what": f"kernel {name}", "ms": sec * 1e3,
                         "rate": f"{moved / sec / 1e9:.1f} GB/s", "of_peak": moved / sec / bw_peak,
                         "mem": peak_memory(device)})  # fmt: skip
        for r in rows[-len(backends) - 3 :]:
            print(f"{r['shape']:<16} {r['what']:<26} {r['ms']:>10.2f} ms {r['rate']:>16} "
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
