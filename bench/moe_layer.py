"""MoE layer forward+backward on this machine's CPU: our backends against transformers' and
torchtitan's MoE layers, on the same weights and input.

    python bench/moe_layer.py                      # T=4096, fp32 and bf16, 7 rotations, all rows
    python bench/moe_layer.py --impls torch hf-eager hf-grouped_mm   # no torchtitan venv
    python bench/moe_layer.py --reps 3 --warmups 1 --tokens 512 --dtypes fp32   # quick look

Rows: ``reference`` and ``torch`` backends of :class:`pipeline.model.MoELayer` (router, losses
and statistics included); transformers' ``MixtralSparseMoeBlock`` with its ``eager`` and
``grouped_mm`` experts implementations (selected through ``config._experts_implementation``,
the switch transformers' ``@use_experts_implementation`` decorator dispatches on); torchtitan's
``MoE`` (:mod:`torchtitan_moe`, in a virtual environment of its own, see there). The rows run in
rotation (:func:`timing.rotation`), their outputs checked against each other first, each row in
a spawned process of its own (:func:`timing.calls_in_processes` says why; ``--one-process``: all
in this one). Our rows' processes keep freed host memory as the train stage's process does
(:mod:`pipeline.host_memory`); transformers' run under glibc's defaults, as its Trainer
leaves them (``--same-host-memory``, or ``--one-process``: theirs keep it too). torchtitan's row
runs in a child process under glibc's defaults, in rotation with a ``torch`` row of its own under
the same, so its ratio is paired with that one.

Per row: median, minimum and inter-quartile range of the fwd+bwd time, the expert FLOP rate
3 × 2·T·k·3·D·F / median (forward + backward of the expert GEMMs only) against the matmul peak
measured in the same run (:func:`timing.matmul_peak`), and how many times faster ``torch`` is,
rotation by rotation (median [lower quartile]). bf16 on a CPU without native bf16 matmul is far
slower than fp32 (the ``torch`` backend then computes in fp32, see
``pipeline.ops.torch_gemm.gemm_dtype``), so "% peak" uses the faster of the two peaks.
Targets: ``torch`` ≥ :data:`TARGETS` × the fastest peer that computes in the row's dtype, on the
median and the lower quartile of the per-rotation ratios.
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from timing import (
    Built,
    add_peer_memory_args,
    add_process_args,
    against,
    calls_in_processes,
    format_ratio,
    matmul_peak,
    parsed,
    peers_keep_memory,
    ratio,
    rotation,
    short_run_note,
    spread,
)

from pipeline.config import MoEConfig
from pipeline.host_memory import keep_freed_host_memory
from pipeline.model import MoELayer

HIDDEN = 512
CONFIGS = {"E8k2I1024": (8, 2, 1024), "E64k8I128": (64, 8, 128)}
TARGETS = {"E8k2I1024": 1.0, "E64k8I128": 1.5}  # torch over the fastest peer
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
IMPLS = ("reference", "torch", "hf-eager", "hf-grouped_mm", "torchtitan")
IN_PROCESS = IMPLS[:-1]
OURS = IMPLS[:2]


def add_shape_args(p: argparse.ArgumentParser) -> None:
    """Options this script and the torchtitan child share."""
    p.add_argument("--reps", type=int, default=7, help="timed rotations")
    p.add_argument("--warmups", type=int, default=2, help="untimed rotations first")
    p.add_argument("--tokens", type=int, default=4096, help="tokens T per forward")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))


def moe_layer(e: int, k: int, inter: int, backend: str = "auto", seed: int = 0) -> MoELayer:
    """Our layer with weights ~ N(0, 0.02) from ``seed`` (identical for every backend)."""
    layer = MoELayer(
        HIDDEN, MoEConfig(num_experts=e, top_k=k, expert_hidden=inter), backend=backend
    )
    g = torch.Generator().manual_seed(seed)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02, generator=g)
    return layer


def layer_inputs(tokens: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, output gradient)``, the same for every row and process."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, tokens, HIDDEN, generator=g).to(dtype).requires_grad_()
    return x, torch.randn(1, tokens, HIDDEN, generator=g).to(dtype)


def ours(backend: str, e: int, k: int, inter: int, dtype: torch.dtype):
    """(forward callable, module) of our layer."""
    layer = moe_layer(e, k, inter, backend=backend).to(dtype)
    return (lambda x: layer(x)[0]), layer


def build(impl: str, e: int, k: int, inter: int, dtype: torch.dtype):
    """(forward callable, module) for one in-process implementation; all share the weights."""
    if impl in ("reference", "torch"):
        return ours(impl, e, k, inter, dtype)
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    layer = moe_layer(e, k, inter)
    experts = impl.removeprefix("hf-")
    cfg = MixtralConfig(
        hidden_size=HIDDEN,
        intermediate_size=inter,
        num_local_experts=e,
        num_experts_per_tok=k,
        experts_implementation=experts,
    )
    hf = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():  # Mixtral: gate.weight (E, H); gate_up_proj (E, 2I, H) is our w13
        hf.gate.weight.copy_(layer.router.weight)
        hf.experts.gate_up_proj.copy_(layer.experts.w13)
        hf.experts.down_proj.copy_(layer.experts.w2)
    assert hf.experts.config._experts_implementation == experts
    hf = hf.to(dtype)
    return hf, hf


def fwd_bwd(forward, module, x: torch.Tensor, grad: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    forward(x).backward(grad)


def largest_difference(rows: dict, x: torch.Tensor) -> float:
    """Largest norm-relative difference of any row's output from the first row's."""
    with torch.no_grad():
        outs = [fwd(x).float() for fwd, _ in rows.values()]
    return max(((o - outs[0]).norm() / outs[0].norm()).item() for o in outs[1:]) if outs[1:] else 0


def built_row(
    impl: str, e: int, k: int, inter: int, dtype: torch.dtype, tokens: int, same_memory: bool
) -> Built:
    """One row's forward + backward call on the shared input (:func:`calls_in_processes`), in a
    process that keeps freed host memory if the row is ours or ``same_memory``."""
    if impl in OURS or same_memory:
        keep_freed_host_memory()
    x, grad = layer_inputs(tokens, dtype)
    forward, module = build(impl, e, k, inter, dtype)
    return (lambda: fwd_bwd(forward, module, x, grad)), {}


def expert_flops(name: str, tokens: int) -> float:
    e, k, inter = CONFIGS[name]
    return 3 * 2 * tokens * k * 3 * HIDDEN * inter


def measure_in_process(args) -> dict[tuple[str, str], dict]:
    """Per (config, dtype): each in-process row's times and the outputs' largest difference."""
    impls = [i for i in args.impls if i in IN_PROCESS]
    out = {}
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for name in args.configs:
            x, _ = layer_inputs(args.tokens, dtype)
            diff = largest_difference({i: build(i, *CONFIGS[name], dtype) for i in impls}, x)
            print(f"  {name} {dtype_name}: outputs agree within {diff:.2e} (norm-relative)")
            row = partial(built_row, tokens=args.tokens, same_memory=peers_keep_memory(args))
            builders = {i: partial(row, i, *CONFIGS[name], dtype) for i in impls}
            with calls_in_processes(builders, args.threads, args.one_process) as (calls, _):
                times = rotation(calls, args.reps, args.warmups)
            out[name, dtype_name] = {"times": times, "diff": diff}
    return out


def print_table(results: dict, titan: dict, args, peaks: dict[str, float]) -> None:
    print("| config | dtype | impl | median ms | min ms | IQR ms | GFLOP/s | % peak | "
          "torch over it |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, dtype_name), result in results.items():
        peak = max(peaks[dtype_name], peaks["fp32"])
        rows = dict(result["times"])
        paired = {impl: (rows.get("torch"), t) for impl, t in rows.items()}
        if (name, dtype_name) in titan:  # with the torch row its ratio pairs, of its process
            rows["torch (child)"] = titan[name, dtype_name]["torch"]
            rows["torchtitan"] = titan[name, dtype_name]["torchtitan"]
            paired["torch (child)"] = (None, rows["torch (child)"])
            paired["torchtitan"] = (titan[name, dtype_name]["torch"], rows["torchtitan"])
        for impl, ts in rows.items():
            st = spread(ts)
            torch_ts, its = paired[impl]
            over = (
                "-" if impl == "torch" or torch_ts is None else format_ratio(ratio(its, torch_ts))
            )
            gflops = expert_flops(name, args.tokens) / st.median / 1e9
            print(f"| {name} | {dtype_name} | {impl} | {st.median * 1e3:.0f} | "
                  f"{st.minimum * 1e3:.0f} | {st.iqr * 1e3:.0f} | {gflops:.1f} | "
                  f"{100 * gflops / peak:.1f} | {over} |")  # fmt: skip


def print_targets(results: dict, titan: dict) -> None:
    """torch over the fastest peer computing in the row's dtype (torchtitan computes its experts
    in bf16 whatever the layer's dtype, so it is a peer of the bf16 rows only)."""
    for (name, dtype_name), result in results.items():
        times = result["times"]
        peers = {i: (times["torch"], t) for i, t in times.items() if i.startswith("hf-")}
        if (name, dtype_name) in titan and dtype_name == "bf16":
            peers["torchtitan"] = (titan[name, dtype_name]["torch"], titan[name, dtype_name]["torchtitan"])  # fmt: skip
        if "torch" not in times or not peers:
            continue
        best = min(peers, key=lambda i: spread(peers[i][1]).median)
        measured = ratio(peers[best][1], peers[best][0])
        print(f"{name} {dtype_name}: torch over the fastest peer ({best}) "
              f"{against(measured, TARGETS[name])}")  # fmt: skip


def add_args(p: argparse.ArgumentParser) -> None:
    add_shape_args(p)
    add_process_args(p)
    add_peer_memory_args(p)


def main() -> None:
    args = parsed(__doc__, add_args, IMPLS)
    peaks = {name: matmul_peak(DTYPES[name]) for name in ("fp32", *args.dtypes)}
    print(f"threads={args.threads} tokens={args.tokens} hidden={HIDDEN} rotations={args.reps} "
          f"warm-ups={args.warmups} torch={torch.__version__} "
          f"cpu capability={torch.backends.cpu.get_cpu_capability()}")  # fmt: skip
    print("matmul peak GFLOP/s (timing.matmul_peak): "
          + ", ".join(f"{n} {v:.1f}" for n, v in peaks.items()))  # fmt: skip
    print(short_run_note(args.reps, args.warmups))
    kept = "every row" if peers_keep_memory(args) else "our rows (transformers': glibc's defaults)"
    print(f"freed host memory kept (pipeline.host_memory) by {kept}; torchtitan's child: "
          "glibc's defaults")  # fmt: skip
    results = measure_in_process(args)
    titan = {}
    if "torchtitan" in args.impls:
        from torchtitan_moe import run_in_its_venv

        titan = run_in_its_venv(args)
    print_table(results, titan, args, peaks)
    print_targets(results, titan)


if __name__ == "__main__":
    main()
