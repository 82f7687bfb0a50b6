"""Where the time of a default training step goes: ``torch.profiler`` over real Lightning steps.

    python bench/step_profile.py                  # params.yaml's train section, steps 11-30
    python bench/step_profile.py --first 5 --steps 5    # quick look
    python bench/step_profile.py --shape mid --first 3 --steps 5   # the issue-18 mid-size model

Trains the ``params.yaml`` model with the project's trainer (:func:`pipeline.train.trainer.train`:
the data module, every callback, the optimizer, the monitor's logging; freed host memory kept as
the train stage keeps it, :mod:`pipeline.host_memory`) on random token files of
the tokenizer's vocabulary, written to a temporary directory, and profiles ``--steps`` whole
optimizer steps after ``--first`` unprofiled ones (the window holds logging steps; validation,
checkpoints and weight snapshots fall outside it at the default cadence). Every CPU event is
charged, by its self time, to one category:

- Lightning's own actions, named through a Lightning ``Profiler`` whose ranges are
  ``record_function`` ranges: fetching the batch (data loading), the callbacks' hooks
  (logging/callbacks), the optimizer step outside the closure (optimizer: clipping, AdamW,
  zero_grad), the training step and backward (the model), the rest of the loop;
- inside the model, ranges opened by forward hooks on the attention modules and the MoE layers;
  the head and the loss are one autograd function (its GEMMs are the head's, the rest the
  loss's: it forms the gradients in its forward); a backward op belongs to the category of the
  forward op that made its autograd node (the profiler's sequence numbers); matrix products are
  told apart from the rest (SDPA's kernels, elementwise work); inside the experts' autograd
  function, matrix products are the
  experts' GEMMs, the row gather/scatter is dispatch, the rest is the SwiGLU elementwise work.

The time between events (Python) is shown as its own row: wall time minus the events' time.
MFU is against the fp32 matmul peak measured in the same run (:func:`timing.matmul_peak`).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.profilers import Profiler
from timing import matmul_peak
from torch.autograd.profiler import record_function
from torch.profiler import ProfilerActivity, profile
from train_throughput import shaped_params

from pipeline.data.shards import write_split
from pipeline.host_memory import keep_freed_host_memory
from pipeline.model.layers import Attention
from pipeline.model.moe import MoELayer
from pipeline.paths import Paths
from pipeline.train.trainer import train

LABELS = {Attention: "## attention", MoELayer: "## moe"}  # and others by name, below
GEMMS = ("aten::mm", "aten::_grouped_mm", "aten::bmm", "aten::addmm")
GATHER_SCATTER = ("aten::index_select", "aten::index_add_", "aten::index_add")
EXPERTS_FORWARD, EXPERTS_BACKWARD = "_RoutedSwiGLU", "_RoutedSwiGLUBackward"
HEAD_LOSS = "_LinearCrossEntropy"  # the head and the loss, one op (forms its gradients too)
ATTENTION_GEMMS, SDPA, ATTENTION_REST = (
    "attention: q/k/v/o projection GEMMs",
    "attention: SDPA kernel (flash, forward + backward)",
    "attention: q/k norm, rotary, reshapes",
)
EXPERT_GEMMS, SWIGLU, ROUTING = (
    "experts' GEMMs",
    "experts' SwiGLU elementwise",
    "routing + dispatch (router, losses, statistics, sort, gather, combine)",
)
HEAD, NORMS, EMBEDDING, LOSS, OTHER_MODEL = (
    "LM head GEMMs (forward and gradients)",
    "RMSNorms before attention, MoE and the head",
    "embedding (forward, backward)",
    "cross-entropy (softmax, its gradient) and the loss sum",
    "other model (residual adds, gradient accumulation, the rest)",
)
OPTIMIZER, DATA, CALLBACKS, LOOP = (
    "optimizer (clipping, AdamW, zero_grad)",
    "data loading",
    "logging/callbacks",
    "Lightning loop, other",
)
CATEGORIES = (ATTENTION_GEMMS, SDPA, ATTENTION_REST, EXPERT_GEMMS, SWIGLU, ROUTING, HEAD, NORMS,
              EMBEDDING, LOSS, OTHER_MODEL, OPTIMIZER, DATA, CALLBACKS, LOOP)  # fmt: skip
# By name: the whole model (outermost), its embedding and final norm.
MODULE_LABELS = {"": "## model", "embed": "## embed", "norm": "## norm"}


class Ranges(Profiler):
    """A Lightning profiler that only opens a ``record_function`` range per action."""

    def __init__(self) -> None:
        super().__init__()
        self._open: dict[str, list] = defaultdict(list)

    def start(self, action_name: str) -> None:
        rf = record_function(action_name)
        rf.__enter__()
        self._open[action_name].append(rf)

    def stop(self, action_name: str) -> None:
        self._open[action_name].pop().__exit__(None, None, None)

    def summary(self) -> str:
        return ""


class ProfileWindow(L.Callback):
    """Profiles steps ``first + 1 .. first + steps`` (1-based), then stops the run."""

    def __init__(self, first: int, steps: int):
        self.first, self.steps = first, steps
        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.wall = 0.0
        self.tokens = 0

    def setup(self, trainer, pl_module, stage) -> None:
        trainer.profiler = Ranges()  # Lightning reads trainer.profiler at every action
        for name, module in pl_module.model.named_modules():
            last = name.rpartition(".")[2]
            label = MODULE_LABELS.get(last) or LABELS.get(type(module))
            if last in ("attn_norm", "ffn_norm"):
                label = "## norm"
            if label:
                module.register_forward_pre_hook(_open_range(label))
                module.register_forward_hook(_close_range)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 == self.first:
            self.prof.start()
            self.wall = time.perf_counter()
        elif batch_idx + 1 == self.first + self.steps:
            self.wall = time.perf_counter() - self.wall
            self.prof.stop()
            self.tokens = batch[0].numel() * self.steps
            trainer.should_stop = True


_open_ranges: list = []


def _open_range(label: str):
    def hook(module, args) -> None:
        rf = record_function(label)
        rf.__enter__()
        _open_ranges.append(rf)

    return hook


def _close_range(module, args, output) -> None:
    _open_ranges.pop().__exit__(None, None, None)


def categorise(events) -> dict[str, float]:
    """Self CPU microseconds per category (see the module docstring)."""
    forward_label: dict[int, str] = {}
    for e in events:  # the label each forward op's autograd node will carry into the backward
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::engine"):
            chain = _chain(e)
            if not any(n.startswith("autograd::engine") for n in chain):
                forward_label.setdefault(e.sequence_nr, _innermost_label(chain))
    totals: dict[str, float] = defaultdict(float)
    for e in events:
        totals[_category(e, _chain(e), forward_label)] += e.self_cpu_time_total
    return totals


def _chain(e) -> list[str]:
    """Names from ``e`` up to its root."""
    names = []
    while e is not None:
        names.append(e.name)
        e = e.cpu_parent
    return names


def _innermost_label(chain: list[str]) -> str:
    """The innermost module range (or the experts' or the head's function) around an op;
    ``## loss`` for the training step's own ops outside the model (the loss sum)."""
    label = next((n for n in chain if n.startswith("## ") or n in (EXPERTS_FORWARD, HEAD_LOSS)), "")
    if not label and any(n.endswith(".training_step") for n in chain):
        return "## loss"
    return label


def _category(e, chain: list[str], forward_label: dict[int, str]) -> str:
    joined = " ".join(chain)
    if "train_dataloader_next" in joined:
        return DATA
    if "[Callback]" in joined:
        return CALLBACKS
    if not any(n.endswith((".training_step", ".backward")) for n in chain):
        return OPTIMIZER if "optimizer" in joined else LOOP
    label = _innermost_label(chain)
    node = next((n for n in chain if n.startswith("autograd::engine::evaluate_function")), None)
    if node is not None:
        seq = next((x.sequence_nr for x in _ancestors(e) if x.name == node), -1)
        label = EXPERTS_FORWARD if EXPERTS_BACKWARD in node else forward_label.get(seq, "")
    gemm = e.name in GEMMS
    if label == EXPERTS_FORWARD:
        return EXPERT_GEMMS if gemm else ROUTING if e.name in GATHER_SCATTER else SWIGLU
    if label == "## attention":
        return (
            ATTENTION_GEMMS if gemm else SDPA if "scaled_dot_product" in e.name else ATTENTION_REST
        )
    if label == HEAD_LOSS:
        return HEAD if gemm else LOSS
    known = {"## moe": ROUTING, "## norm": NORMS, "## embed": EMBEDDING, "## loss": LOSS}
    return known.get(label, OTHER_MODEL)


def _ancestors(e):
    while e is not None:
        yield e
        e = e.cpu_parent


def write_random_tokens(paths: Paths, vocab: int, tokens: int, seed: int = 0) -> None:
    """Documents of random ids (the step's cost does not depend on them)."""
    rng = np.random.default_rng(seed)
    for split, total in (("train", tokens), ("validation", tokens // 8)):
        docs = [rng.integers(1, vocab, 1000).tolist() for _ in range(total // 1000 + 1)]
        write_split(
            paths.token_split(split), split, [docs], dtype="uint16", vocab_size=vocab, eot_id=0
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--shape", choices=("default", "mid"), default="default")
    p.add_argument("--vocab", type=int, default=None, help="default: tokenize.vocab_size")
    p.add_argument("--first", type=int, default=10, help="unprofiled steps first")
    p.add_argument("--steps", type=int, default=20, help="profiled steps")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(keep_freed_host_memory())  # as the train stage's process
    params = shaped_params(args)
    cfg = params.train
    peak = matmul_peak(torch.float32)
    window = ProfileWindow(args.first, args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        paths = Paths(root=Path(tmp))
        tokens = (args.first + args.steps + 2) * cfg.micro_batch_size * (cfg.seq_len + 1)
        write_random_tokens(paths, params.tokenize.vocab_size, 2 * tokens)
        train(params, paths, "profile", progress_bar=False, extra_callbacks=[window])
    totals = categorise(window.prof.events())
    wall_us = window.wall * 1e6
    flops = torch_flops_per_token(params)
    rate = window.tokens / window.wall
    print(f"{args.steps} steps after {args.first}, {window.tokens} tokens in {window.wall:.2f} s "
          f"(profiler on): {rate:,.0f} tokens/s, MFU {rate * flops / (peak * 1e9):.3f} against "
          f"the measured fp32 matmul peak {peak:.1f} GFLOP/s; threads={args.threads}, "
          f"torch={torch.__version__}")  # fmt: skip
    print("| where | ms per step | share of the step |\n|---|---|---|")
    for name in CATEGORIES:
        print(f"| {name} | {totals[name] / 1e3 / args.steps:.1f} | "
              f"{100 * totals[name] / wall_us:.1f} % |")  # fmt: skip
    between = wall_us - sum(totals.values())
    print(f"| between events (Python) | {between / 1e3 / args.steps:.1f} | "
          f"{100 * between / wall_us:.1f} % |")  # fmt: skip


def torch_flops_per_token(params) -> float:
    from pipeline.model import MoETransformer

    model = MoETransformer(params.train.model, params.tokenize.vocab_size)
    return model.flops_per_token(params.train.seq_len)


if __name__ == "__main__":
    main()
