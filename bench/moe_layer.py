"""MoE layer forward+backward on this machine's CPU: our backends against transformers' Mixtral.

    python bench/moe_layer.py                      # full run: T=4096, fp32 and bf16, 5 reps
    python bench/moe_layer.py --reps 2 --tokens 512 --dtypes fp32   # quick look

Rows: ``reference`` and ``torch`` backends of :class:`pipeline.model.MoELayer` (router, losses
and statistics included) and transformers' ``MixtralSparseMoeBlock`` with its ``eager`` and
``grouped_mm`` experts implementations (selected through ``config._experts_implementation``,
the switch transformers' ``@use_experts_implementation`` decorator dispatches on). All four run
the same weights on the same input, in rotation, so load from other processes hits them alike;
the outputs are checked against each other first.

Expert FLOP rate = 3 × 2·T·k·3·H·I / time (forward + backward of the expert GEMMs only),
against a dense 2048³ matmul measured in the same run. bf16 on a CPU without native bf16
matmul is far slower than fp32 (the ``torch`` backend then computes in fp32, see
``pipeline.ops.torch_gemm.gemm_dtype``), so "% peak" uses the faster of the two peaks.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import matmul_peak, seconds
from transformers import MixtralConfig
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

from pipeline.config import MoEConfig
from pipeline.model import MoELayer

HIDDEN = 512
CONFIGS = {"E8k2I1024": (8, 2, 1024), "E64k8I128": (64, 8, 128)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("reference", "torch", "hf-eager", "hf-grouped_mm")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per row (median)")
    p.add_argument("--tokens", type=int, default=4096, help="tokens T per forward")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    p.add_argument("--impls", nargs="+", choices=IMPLS, default=list(IMPLS))
    return p.parse_args()


def moe_layer(e: int, k: int, inter: int, backend: str = "auto", seed: int = 0) -> MoELayer:
    """Our layer with weights ~ N(0, 0.02) from ``seed`` (identical for every backend)."""
    layer = MoELayer(
        HIDDEN, MoEConfig(num_experts=e, top_k=k, expert_hidden=inter), backend=backend
    )
    g = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02, generator=g)
    return layer


def build(impl: str, e: int, k: int, inter: int, dtype: torch.dtype):
    """(forward callable, module) for one implementation; all share the same weights."""
    if impl in ("reference", "torch"):
        ours = moe_layer(e, k, inter, backend=impl).to(dtype)
        return (lambda x: ours(x)[0]), ours
    ours = moe_layer(e, k, inter)
    experts = impl.removeprefix("hf-")
    cfg = MixtralConfig(
        hidden_size=HIDDEN,
        intermediate_size=inter,
        num_local_experts=e,
        num_experts_per_tok=k,
        experts_implementation=experts,
    )
    hf = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():  # Mixtral: gate.weight (E, H); gate_up_proj (E, 2I, H) = [w1; w3]
        hf.gate.weight.copy_(ours.router.weight)
        hf.experts.gate_up_proj.copy_(torch.cat([ours.experts.w1, ours.experts.w3], dim=1))
        hf.experts.down_proj.copy_(ours.experts.w2)
    assert hf.experts.config._experts_implementation == experts
    hf = hf.to(dtype)
    return hf, hf


def fwd_bwd(forward, module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    forward(x).backward(grad)


def check_outputs(rows: dict, x: torch.Tensor) -> float:
    """Largest norm-relative difference of any implementation's output from the first one's."""
    with torch.no_grad():
        outs = [fwd(x).float() for fwd, _ in rows.values()]
    return max(((o - outs[0]).norm() / outs[0].norm()).item() for o in outs[1:]) if outs[1:] else 0


def run_config(name: str, dtype_name: str, args, peak: float) -> list[dict]:
    e, k, inter = CONFIGS[name]
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, args.tokens, HIDDEN, generator=g).to(dtype).requires_grad_()
    grad = torch.randn(1, args.tokens, HIDDEN, generator=g).to(dtype)
    rows = {impl: build(impl, e, k, inter, dtype) for impl in args.impls}
    diff = check_outputs(rows, x)
    times: dict[str, list[float]] = {impl: [] for impl in rows}
    for fwd, mod in rows.values():  # warm-up
        fwd_bwd(fwd, mod, x, grad)
    for _ in range(args.reps):  # rotate, so load from other processes hits every row alike
        for impl, (fwd, mod) in rows.items():
            times[impl].append(seconds(lambda f=fwd, m=mod: fwd_bwd(f, m, x, grad)))
    flops = 3 * 2 * args.tokens * k * 3 * HIDDEN * inter
    hf_best = min(
        (statistics.median(t) for i, t in times.items() if i.startswith("hf")), default=None
    )
    out = []
    for impl, ts in times.items():
        med = statistics.median(ts)
        out.append({"config": name, "dtype": dtype_name, "impl": impl, "ms": med * 1e3,
                    "min_ms": min(ts) * 1e3, "gflops": flops / med / 1e9,
                    "peak_pct": 100 * flops / med / 1e9 / peak,
                    "vs_hf": hf_best / med if hf_best else float("nan"), "diff": diff})  # fmt: skip
    return out


def print_table(rows: list[dict]) -> None:
    head = f"| {'config':10} | {'dtype':5} | {'impl':13} | {'median ms':>9} | {'min ms':>8} | "
    head += f"{'GFLOP/s':>7} | {'% peak':>6} | {'vs best HF':>10} |"
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['config']:10} | {r['dtype']:5} | {r['impl']:13} | {r['ms']:9.0f} | "
              f"{r['min_ms']:8.0f} | {r['gflops']:7.1f} | {r['peak_pct']:6.1f} | "
              f"{r['vs_hf']:9.2f}x |")  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    peaks = {name: matmul_peak(DTYPES[name]) for name in ("fp32", *args.dtypes)}
    print(f"threads={args.threads} tokens={args.tokens} hidden={HIDDEN} reps={args.reps} "
          f"torch={torch.__version__}")  # fmt: skip
    print("matmul peak GFLOP/s: " + ", ".join(f"{n} {v:.1f}" for n, v in peaks.items()))
    rows = []
    for dtype_name in args.dtypes:
        peak = max(peaks[dtype_name], peaks["fp32"])
        for name in args.configs:
            result = run_config(name, dtype_name, args, peak)
            print(
                f"  {name} {dtype_name}: outputs agree within {result[0]['diff']:.2e} (norm-relative)"
            )
            rows += result
    print_table(rows)


if __name__ == "__main__":
    main()
