"""Peak memory of one MoE layer's forward + backward on the CPU, as the allocator counts it.

    python bench/moe_memory.py                     # this checkout's pipeline package
    python bench/moe_memory.py --root /tmp/head    # another checkout's (e.g. ``git archive HEAD``)

The layer (:class:`pipeline.model.MoELayer`: router, losses, dispatch, experts, combine) runs one
forward and backward under ``torch.profiler`` with ``profile_memory=True``: every allocation and
free of the CPU allocator is an event carrying the running total of the bytes allocated since
the profile started, so the peak is exact (no sampling, no RSS and its allocator caching).
Reported: the peak of the bytes the forward + backward allocated (weights and input exist
before and are not counted), and those still live after it (the gradients). Default shape: the GPU benchmark's (T=16384, D=2048, E=64, k=8, F=1024) scaled to a
CPU, T=4096, D=512, E=64, k=8, F=256, fp32.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
from pathlib import Path

import torch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                   help="the checkout whose pipeline package is measured")  # fmt: skip
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=512)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--backend", default="torch")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def allocator_totals(prof: torch.profiler.profile) -> list[tuple[int, int]]:
    """``(bytes of the event, live bytes after it)`` of every CPU allocator event, in order."""
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    memory = [e for e in events if e.get("name") == "[memory]" and e["args"]["Device Type"] == 0]
    memory.sort(key=lambda e: e["ts"])
    return [(e["args"]["Bytes"], e["args"]["Total Allocated"]) for e in memory]


def main() -> None:
    args = parse_args()
    sys.path.insert(0, str(args.root.resolve()))
    config = importlib.import_module("pipeline.config")
    model = importlib.import_module("pipeline.model")
    if not str(Path(model.__file__).resolve()).startswith(str(args.root.resolve())):
        raise SystemExit(f"imported {model.__file__}, not the checkout {args.root}")
    torch.set_num_threads(args.threads)
    cfg = config.MoEConfig(num_experts=args.experts, top_k=args.top_k, expert_hidden=args.hidden)
    layer = model.MoELayer(args.d_model, cfg, backend=args.backend).train()
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.02, generator=g)
    x = torch.randn(1, args.tokens, args.d_model, generator=g, requires_grad=True)
    grad = torch.randn(1, args.tokens, args.d_model, generator=g)
    run = lambda: torch.autograd.backward(layer(x)[0], grad)  # noqa: E731
    run()  # warm-up: one-time allocations (oneDNN primitives, logging) stay out of the count
    layer.zero_grad(set_to_none=True)
    x.grad = None
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:  # fmt: skip
        run()
    totals = allocator_totals(prof)
    start = totals[0][1] - totals[0][0]  # the count before the first event (0: the profile's)
    peak = max(total for _, total in totals) - start
    after = totals[-1][1] - start
    mib = 2**20
    print(f"root {args.root}: T={args.tokens} D={args.d_model} E={args.experts} "
          f"k={args.top_k} F={args.hidden} fp32, backend {args.backend}")  # fmt: skip
    print(f"peak allocated by forward + backward {peak / mib:.1f} MiB; "
          f"live after it (gradients) {after / mib:.1f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
