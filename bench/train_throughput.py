"""Training throughput of the default MoE model against a dense model with the same active size.

    python bench/train_throughput.py                 # default params.yaml model, 5 reps
    python bench/train_throughput.py --reps 2 --steps 3   # quick look

Both models come from ``params.yaml``'s ``train`` section; the dense one replaces every MoE
layer by a dense SwiGLU of hidden size ``top_k · expert_hidden + shared experts``, so each token
meets the same number of parameters (the router's D·E weights aside). A timed repetition is
``--steps`` full optimizer steps (forward, loss incl. the router losses, backward, clipping,
AdamW) on one micro-batch of the default shape; the two models alternate repetition by
repetition so that load from other processes hits both alike. MFU uses
``MoETransformer.flops_per_token`` (active parameters) against a fp32 matmul measured in the
same run. The data are random token ids: the cost of a step does not depend on their values
(dropless routing keeps every token whatever the router decides).
"""

from __future__ import annotations

import argparse
import statistics

import torch
from timing import matmul_peak, seconds

from pipeline.config import ModelConfig, TrainConfig, load_params
from pipeline.model import MoETransformer
from pipeline.train.module import token_cross_entropy
from pipeline.train.optim import build_optimizer


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--vocab", type=int, default=None, help="default: tokenize.vocab_size")
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per model (median)")
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per repetition")
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def dense_twin(cfg: ModelConfig) -> ModelConfig:
    """The same transformer with every layer dense and the MoE layers' active hidden size."""
    if cfg.first_dense_layers or cfg.moe_every != 1:
        raise SystemExit(
            "the dense twin is defined for all-MoE stacks (moe_every=1, no dense layers)"
        )
    hidden = (cfg.moe.top_k + cfg.moe.num_shared_experts) * cfg.moe.expert_hidden
    return cfg.model_copy(update={"first_dense_layers": cfg.n_layers, "dense_hidden": hidden})


class Stepper:
    """One model, its optimizer and a fixed micro-batch: ``step()`` is one optimizer step."""

    def __init__(self, cfg: TrainConfig, model_cfg: ModelConfig, vocab: int, seed: int = 0):
        torch.manual_seed(seed)
        self.model = MoETransformer(model_cfg, vocab).train()
        self.optimizer, _ = build_optimizer(self.model, cfg.optim, cfg.max_steps)
        self.grad_clip = cfg.optim.grad_clip
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(vocab, (cfg.micro_batch_size, cfg.seq_len + 1), generator=g)
        self.inputs, self.targets = tokens[:, :-1], tokens[:, 1:]
        self.tokens_per_step = self.inputs.numel()
        self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        self.params = self.model.num_params()

    def step(self) -> None:
        out = self.model(self.inputs)
        loss = token_cross_entropy(out.logits, self.targets) + out.aux_loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.update_router_biases()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = params.train
    vocab = args.vocab or params.tokenize.vocab_size
    peak = matmul_peak(torch.float32)
    steppers = {
        "moe": Stepper(cfg, cfg.model, vocab),
        "dense": Stepper(cfg, dense_twin(cfg.model), vocab),
    }
    print(f"threads={args.threads} micro-batch={cfg.micro_batch_size}x{cfg.seq_len} "
          f"steps/rep={args.steps} reps={args.reps} torch={torch.__version__}")  # fmt: skip
    print(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
    for s in steppers.values():
        s.step()  # warm-up: allocator, oneDNN primitives
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(args.reps):
        for name, s in steppers.items():
            times[name].append(seconds(lambda s=s: [s.step() for _ in range(args.steps)]))
    print_table(steppers, times, args.steps, peak)


def print_table(steppers: dict, times: dict, steps: int, peak: float) -> None:
    rate = {n: steppers[n].tokens_per_step * steps / statistics.median(t) for n, t in times.items()}
    print("| model | total params | active params | tokens/s (median) | MFU   | vs dense |")
    print("|-------|--------------|---------------|-------------------|-------|----------|")
    for name, s in steppers.items():
        mfu = rate[name] * s.flops_per_token / (peak * 1e9)
        print(f"| {name:5} | {s.params['total']:12,} | {s.params['active']:13,} | "
              f"{rate[name]:17,.0f} | {mfu:5.2f} | {rate[name] / rate['dense']:7.2f}x |")  # fmt: skip


if __name__ == "__main__":
    main()
