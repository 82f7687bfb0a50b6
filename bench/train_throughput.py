"""Training throughput of an MoE model against a dense model with the same active size.

    python bench/train_throughput.py                    # default params.yaml model, 7 rotations
    python bench/train_throughput.py --shape mid        # d_model 512, 8 layers, E=32 k=4 F=256
    python bench/train_throughput.py --reps 3 --warmups 1   # quick look

``--shape default`` is ``params.yaml``'s ``train`` section; ``--shape mid`` the issue-18 mid-size
model (:data:`MID`). The dense twin replaces every MoE layer by a dense SwiGLU of hidden size
``top_k · expert_hidden + shared experts``, so each token meets the same number of parameters
(the router's D·E weights aside). A timed call is one full optimizer step (forward, loss incl.
the router losses, backward, clipping, AdamW) on one micro-batch; the two models run in rotation
(:func:`timing.rotation`), each in a process of its own as a trainer would run it, set up as the
train stage's (freed host memory kept, :mod:`pipeline.host_memory`;
:func:`timing.calls_in_processes`; ``--one-process`` for all in one), and the MoE/dense ratio
is taken rotation by rotation
(:func:`timing.ratio`: median and lower quartile). MFU uses
``MoETransformer.flops_per_token`` (active parameters) against the fp32 matmul peak measured in
the same run (:func:`timing.matmul_peak`). The data are random token ids: the cost of a step
does not depend on their values (dropless routing keeps every token whatever the router decides).
"""

from __future__ import annotations

import argparse
from functools import partial

import torch
from timing import (
    Built,
    add_process_args,
    against,
    calls_in_processes,
    matmul_peak,
    ratio,
    rotation,
    short_run_note,
    spread,
)

from pipeline.config import ModelConfig, Params, TrainConfig, load_params
from pipeline.host_memory import keep_freed_host_memory
from pipeline.model import MoETransformer
from pipeline.train.optim import build_optimizer

# The issue-18 mid-size model: 8 layers of d_model 512 (8 heads, 4 key/value heads), 32 experts
# of hidden 256, top-4, on 8 windows of 512 tokens (4096 tokens, as the default's 16 × 256).
MID = {
    "model": {"d_model": 512, "n_layers": 8, "n_heads": 8, "n_kv_heads": 4, "max_seq_len": 512,
              "moe": {"num_experts": 32, "top_k": 4, "expert_hidden": 256}},
    "seq_len": 512,
    "micro_batch_size": 8,
}  # fmt: skip
MOE_OVER_DENSE_TARGET = 0.95


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_common_args(p)
    return p.parse_args()


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options every training-step benchmark takes."""
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--shape", choices=("default", "mid"), default="default")
    p.add_argument("--vocab", type=int, default=None, help="default: tokenize.vocab_size")
    p.add_argument("--reps", type=int, default=7, help="timed rotations")
    p.add_argument("--warmups", type=int, default=2, help="untimed rotations first")
    p.add_argument("--threads", type=int, default=2)
    add_process_args(p)


def shaped_params(args: argparse.Namespace) -> Params:
    """``--params`` with the train section of the shape ``args`` names and the vocabulary size
    ``--vocab`` (default: the params')."""
    params = load_params(args.params)
    train = params.train.model_dump()
    if args.shape == "mid":
        train = _merged(train, MID)
    vocab = args.vocab or params.tokenize.vocab_size
    tokenize = params.tokenize.model_copy(update={"vocab_size": vocab})
    return params.model_copy(
        update={"train": TrainConfig.model_validate(train), "tokenize": tokenize}
    )


def _merged(base: dict, update: dict) -> dict:
    """``base`` with ``update``'s keys replaced, nested dictionaries merged key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(base[key], value) if isinstance(value, dict) else value
    return out


def dense_twin(cfg: ModelConfig) -> ModelConfig:
    """The same transformer with every layer dense and the MoE layers' active hidden size."""
    if cfg.first_dense_layers or cfg.moe_every != 1:
        raise SystemExit(
            "the dense twin is defined for all-MoE stacks (moe_every=1, no dense layers)"
        )
    hidden = (cfg.moe.top_k + cfg.moe.num_shared_experts) * cfg.moe.expert_hidden
    return cfg.model_copy(update={"first_dense_layers": cfg.n_layers, "dense_hidden": hidden})


CPU = torch.device("cpu")


class Stepper:
    """One model, its optimizer and a fixed micro-batch: ``step()`` is one optimizer step.
    ``autocast`` (a dtype) runs the forward as Lightning's ``bf16-mixed`` does: fp32 weights,
    optimizer and gradients, the products under autocast."""

    def __init__(
        self,
        cfg: TrainConfig,
        model_cfg: ModelConfig,
        vocab: int,
        seed: int = 0,
        device: torch.device = CPU,
        backend: str = "auto",
        autocast: torch.dtype | None = None,
    ):
        torch.manual_seed(seed)
        self.model = MoETransformer(model_cfg, vocab, backend=backend).to(device).train()
        self.optimizer, _ = build_optimizer(
            self.model, cfg.optim, cfg.max_steps, mixed_precision=autocast is not None
        )
        self.grad_clip = cfg.optim.grad_clip
        self.device, self.autocast = device, autocast
        self.inputs, self.targets = (t.to(device) for t in micro_batch(cfg, vocab, seed))
        self.tokens_per_step = self.inputs.numel()
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        self.params = self.model.num_params()

    def built(self) -> Built:
        """The step and what the tables print of it (:func:`timing.calls_in_processes`)."""
        facts = {"tokens_per_step": self.tokens_per_step, "params": self.params,
                 "flops_per_token": self.flops_per_token}  # fmt: skip
        return self.step, facts

    def loss(self) -> torch.Tensor:
        """Forward and loss: cross-entropy plus the router losses the model computed."""
        out = self.model(self.inputs, self.targets)  # as the trainer: head and loss fused
        return out.cross_entropy + out.aux_loss

    def after_step(self) -> None:
        self.model.update_router_biases()

    def step(self) -> None:
        with torch.autocast(self.device.type, self.autocast, enabled=self.autocast is not None):
            loss = self.loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.after_step()


def micro_batch(cfg: TrainConfig, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)``: one micro-batch of random token ids, the same for a seed."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (cfg.micro_batch_size, cfg.seq_len + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def built_stepper(cfg: TrainConfig, model_cfg: ModelConfig, vocab: int) -> Built:
    """A worker's :class:`Stepper` (:func:`timing.calls_in_processes`), in a process set up as
    the train stage's (:func:`keep_freed_host_memory`)."""
    keep_freed_host_memory()
    return Stepper(cfg, model_cfg, vocab).built()


def print_run_line(args: argparse.Namespace, cfg: TrainConfig) -> None:
    where = "all in this process" if args.one_process else "each model in its own process"
    print(f"shape={args.shape} threads={args.threads} micro-batch={cfg.micro_batch_size}x"
          f"{cfg.seq_len} rotations={args.reps} warm-ups={args.warmups} torch={torch.__version__}"
          f" ({where})")  # fmt: skip


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    params = shaped_params(args)
    cfg, vocab = params.train, params.tokenize.vocab_size
    peak = matmul_peak(torch.float32)
    builders = {
        "moe": partial(built_stepper, cfg, cfg.model, vocab),
        "dense": partial(built_stepper, cfg, dense_twin(cfg.model), vocab),
    }
    print_run_line(args, cfg)
    print(f"fp32 matmul peak (measured, timing.matmul_peak): {peak:.1f} GFLOP/s")
    print(short_run_note(args.reps, args.warmups))
    with calls_in_processes(builders, args.threads, args.one_process) as (calls, facts):
        times = rotation(calls, args.reps, args.warmups)
    print_table(facts, times, peak)
    measured = ratio(times["dense"], times["moe"])
    print("MoE / dense tokens/s, median of per-rotation ratios [lower quartile]: "
          + against(measured, MOE_OVER_DENSE_TARGET))  # fmt: skip


def print_table(facts: dict[str, dict], times: dict[str, list[float]], peak: float) -> None:
    """One row per model: tokens/s at the median step, at the fastest, the step's IQR, MFU."""
    print("| model | total params | active params | tokens/s (median) | tokens/s (best) | "
          "step IQR ms | MFU (fp32 peak) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, f in facts.items():
        st = spread(times[name])
        rate = f["tokens_per_step"] / st.median
        mfu = rate * f["flops_per_token"] / (peak * 1e9)
        print(f"| {name} | {f['params']['total']:,} | {f['params']['active']:,} | {rate:,.0f} | "
              f"{f['tokens_per_step'] / st.minimum:,.0f} | {st.iqr * 1e3:.0f} | {mfu:.3f} |")  # fmt: skip


if __name__ == "__main__":
    main()
