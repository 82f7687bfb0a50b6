"""torchtitan's MoE layer as a row of ``bench/moe_layer.py``, in a virtual environment of its own.

torchtitan (PyPI ``torchtitan``, :data:`TORCHTITAN`) pins ``datasets<4.8``; the project needs
``datasets`` 5, so the two cannot share ``.venv``. :func:`run_in_its_venv` creates
``build/venv-torchtitan`` on first use (``python -m venv``, then pip: torchtitan, the project's
own torch and Triton versions — torchtitan imports Triton at import time even on a CPU — and
pydantic + PyYAML for ``pipeline.config``), then runs this file there as a child process, which
imports the project from the source tree, builds torchtitan's
``torchtitan.models.common.moe.MoE`` (softmax top-k router with renormalised weights, local
token dispatcher, ``GroupedExperts``, no shared experts, no load-balancing bias) with our
``torch`` layer's weights, checks their outputs agree, times both in rotation on the same input
and prints the times as JSON.

What torchtitan's layer does differently, on purpose (v0.3.0, ``models/common/moe.py``):
``GroupedExperts.forward`` casts the rows and the expert weights to bf16 whatever the layer's
dtype and multiplies with ``torch._grouped_mm``, so its "fp32" row computes the experts in bf16;
its layer computes no router loss or statistics (torchtitan adds the balance loss elsewhere).

CI must not run this: it downloads torchtitan and its dependencies (~100 packages) from PyPI.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / "build" / "venv-torchtitan"  # build/ is git-ignored
TORCHTITAN = "torchtitan==0.3.0"


def requirements() -> list[str]:
    return [
        TORCHTITAN,
        f"torch=={torch.__version__.split('+')[0]}",
        f"triton=={importlib.metadata.version('triton')}",
        "pydantic",
        "pyyaml",
    ]


def venv_python() -> Path:
    """The venv's interpreter, created and installed first if its stamp does not match."""
    python, stamp = VENV / "bin" / "python", VENV / ".requirements"
    wanted = " ".join(requirements())
    if stamp.exists() and stamp.read_text() == wanted:
        return python
    print(f"creating {VENV} with {wanted}", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile"]
    subprocess.run([*pip, *requirements()], check=True)
    stamp.write_text(wanted)
    return python


def run_in_its_venv(args: argparse.Namespace) -> dict[tuple[str, str], dict]:
    """``{(config, dtype): {"torch": times, "torchtitan": times, "diff": float}}``, or ``{}``
    with the reason printed when the venv or the child fails."""
    try:
        python = venv_python()
    except subprocess.CalledProcessError as exc:
        print(f"torchtitan row not run: creating {VENV} failed ({exc})")
        return {}
    child = [str(python), __file__, "--reps", str(args.reps), "--warmups", str(args.warmups),
             "--tokens", str(args.tokens), "--threads", str(args.threads),
             "--dtypes", *args.dtypes, "--configs", *args.configs]  # fmt: skip
    done = subprocess.run(child, capture_output=True, text=True)
    if done.returncode:
        print(
            f"torchtitan row not run: the child failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
        return {}
    print(done.stdout.rsplit("\n", 2)[0])  # the child's own lines, less the JSON
    return {(r["config"], r["dtype"]): r for r in json.loads(done.stdout.splitlines()[-1])}


def torchtitan_moe(layer, dtype):
    """torchtitan's MoE with ``layer``'s (our MoELayer's) router and expert weights."""
    from torchtitan.models.common.linear import Linear
    from torchtitan.models.common.moe import GroupedExperts as TitanExperts
    from torchtitan.models.common.moe import (
        MoE,
        RoutedExperts,
        TokenChoiceTopKRouter,
    )
    from torchtitan.models.common.token_dispatcher import LocalTokenDispatcher

    cfg = layer.cfg
    e, k, d, f = cfg.num_experts, cfg.top_k, layer.experts.w2.shape[1], cfg.expert_hidden
    moe = MoE.Config(
        num_experts=e,
        routed_experts=RoutedExperts.Config(
            inner_experts=TitanExperts.Config(dim=d, hidden_dim=f, num_experts=e),
            token_dispatcher=LocalTokenDispatcher.Config(num_experts=e, top_k=k),
        ),
        router=TokenChoiceTopKRouter.Config(
            num_experts=e,
            gate=Linear.Config(in_features=d, out_features=e, bias=False),
            top_k=k,
            score_func="softmax",
            route_norm=cfg.renormalize,
        ),
        load_balance_coeff=None,  # no aux-loss-free bias: plain top-k, as our softmax_topk
    ).build()
    experts = moe.routed_experts.inner_experts
    with torch.no_grad():
        moe.router.gate.weight.copy_(layer.router.weight)
        experts.w1_EFD.copy_(layer.experts.w13[:, :f])
        experts.w3_EFD.copy_(layer.experts.w13[:, f:])
        experts.w2_EDF.copy_(layer.experts.w2)
    return moe.to(dtype).train()


def child_main() -> None:
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    from moe_layer import (
        CONFIGS,
        DTYPES,
        add_shape_args,
        fwd_bwd,
        largest_difference,
        layer_inputs,
        moe_layer,
        ours,
    )
    from timing import rotation

    p = argparse.ArgumentParser()
    add_shape_args(p)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torchtitan {importlib.metadata.version('torchtitan')} child: torch {torch.__version__}")
    out = []
    for dtype_name in args.dtypes:
        for name in args.configs:
            dtype = DTYPES[dtype_name]
            x, grad = layer_inputs(args.tokens, dtype)
            titan = torchtitan_moe(moe_layer(*CONFIGS[name]), dtype)
            rows = {"torch": ours("torch", *CONFIGS[name], dtype), "torchtitan": (titan, titan)}
            diff = largest_difference(rows, x)
            print(f"  {name} {dtype_name}: torchtitan's output within {diff:.2e} of ours "
                  "(norm-relative; its experts compute in bf16)")  # fmt: skip
            # Both rows in this one process: torchtitan's ratio pairs it with this torch row.
            calls = {n: partial(fwd_bwd, f, m, x, grad) for n, (f, m) in rows.items()}
            times = rotation(calls, args.reps, args.warmups)
            out.append({"config": name, "dtype": dtype_name, "diff": diff, **times})
    print(json.dumps(out))


if __name__ == "__main__":
    child_main()
