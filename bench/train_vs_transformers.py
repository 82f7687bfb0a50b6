"""One whole training step: the project's model against transformers' on the same weights.

    python bench/train_vs_transformers.py                 # default params.yaml model, 7 rotations
    python bench/train_vs_transformers.py --shape mid     # d_model 512, 8 layers, E=32 k=4 F=256

What a user would train instead: ``Qwen3MoeForCausalLM`` (the architecture the export stage picks
for this model, :func:`pipeline.export.architectures.choose_architecture`), built from the config
the export writes (:func:`~pipeline.export.architectures.hf_config`) and loaded with
``from_pretrained`` from the export's tensors (:func:`~pipeline.export.architectures.hf_state_dict`)
of the project's freshly initialised model; once per experts implementation
(``eager``, ``grouped_mm``). Before timing, every model's logits and router loss are computed on
the micro-batch and compared.

A timed call is one optimizer step on one micro-batch (16 × 256 tokens by default, 8 × 512 at
``mid``), the same on every side: forward, loss = cross-entropy + router losses, backward,
gradient clipping, AdamW (the project's parameter groups and hyper-parameters), zero_grad.
The losses are each side's own: the project's training forward with targets (the head and the
cross-entropy fused, :mod:`pipeline.ops.linear_cross_entropy`) plus its router losses
(Switch balance + z-loss per layer, weighted as in ``params.yaml``); transformers' training
forward with ``labels`` (its ``ForCausalLMLoss``, given our targets as ``shift_labels``) and
``output_router_logits=True`` (``load_balancing_loss_func`` over all layers times
``router_aux_loss_coef``, added to the loss by the model). fp32, this machine's CPU, the models in
rotation (:mod:`timing`), each in a process of its own set up as its trainer sets it: ours keeps
freed host memory as the train stage's process does (:mod:`pipeline.host_memory`),
transformers' runs under glibc's defaults, which its Trainer leaves alone (``--same-host-memory``
gives transformers' processes our setting too, and so does ``--one-process``). The speed-up over
transformers is taken rotation by rotation against its fastest implementation (by median), and
the target is met when its median and lower quartile clear it.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
from functools import partial
from pathlib import Path

import torch
from safetensors.torch import save_file
from timing import (
    Built,
    add_peer_memory_args,
    against,
    calls_in_processes,
    format_ratio,
    parsed,
    peers_keep_memory,
    ratio,
    rotation,
    short_run_note,
    spread,
)
from train_throughput import (
    Stepper,
    add_common_args,
    micro_batch,
    print_run_line,
    shaped_params,
)

from pipeline.config import TrainConfig
from pipeline.export.architectures import hf_config, hf_state_dict
from pipeline.host_memory import keep_freed_host_memory
from pipeline.train.module import token_cross_entropy
from pipeline.train.optim import build_optimizer

IMPLEMENTATIONS = ("eager", "grouped_mm")
TARGETS = {"default": 1.2, "mid": 1.5}  # project over transformers' fastest, tokens/s


class TransformersStepper(Stepper):
    """transformers' model of the weights exported to ``export_dir``, on :class:`Stepper`'s
    micro-batch, with the same optimizer and clipping; its router loss is transformers' own."""

    def __init__(self, cfg: TrainConfig, vocab: int, export_dir: Path, implementation: str):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(
            export_dir,
            dtype=torch.float32,
            attn_implementation="sdpa",  # the project's attention is SDPA too
            experts_implementation=implementation,
        ).train()
        actual = self.model.config._experts_implementation
        if actual != implementation:
            raise SystemExit(f"asked transformers for {implementation} experts, got {actual}")
        self.optimizer, _ = build_optimizer(self.model, cfg.optim, cfg.max_steps)
        self.grad_clip, self.device, self.autocast = cfg.optim.grad_clip, torch.device("cpu"), None
        inputs, targets = micro_batch(cfg, vocab)
        # transformers' loss flattens the targets with view(): a contiguous copy.
        self.inputs, self.targets = inputs, targets.contiguous()
        self.tokens_per_step = self.inputs.numel()

    def built(self) -> Built:
        return self.step, {"tokens_per_step": self.tokens_per_step}

    def forward(self):
        """transformers' own training forward: its cross-entropy on our targets
        (``shift_labels``: no shift inside), plus ``router_aux_loss_coef`` × its balance loss."""
        return self.model(
            input_ids=self.inputs,
            labels=self.targets,
            shift_labels=self.targets,
            output_router_logits=True,
            use_cache=False,
        )

    def loss(self) -> torch.Tensor:
        return self.forward().loss

    def after_step(self) -> None:
        """transformers' router has no state to move after a step."""


def export(ours: Stepper, vocab: int, directory: Path) -> None:
    """What the export stage writes of the model, less the tokenizer: config and weights."""
    hf_config(ours.model.cfg, vocab, eot_id=0, dtype="float32").save_pretrained(directory)
    save_file(hf_state_dict(ours.model, torch.float32), directory / "model.safetensors")


@torch.no_grad()
def check_same_function(ours: Stepper, others: dict[str, TransformersStepper]) -> str:
    """One line: how far each model's logits are from ours (norm-relative per position: the
    median, and how many positions differ beyond 1e-4) and the router losses of both sides, on
    the timed micro-batch."""
    out = ours.model(ours.inputs)
    ce = token_cross_entropy(out.logits, ours.targets)
    parts = [f"ours: cross-entropy {ce.item():.6f}, router losses {out.aux_loss.item():.4g}"]
    for name, other in others.items():
        theirs = other.forward()
        # Per position, norm-relative. fp32 and the same weights: only the summation order
        # differs (~5e-7), except where a router score sits within that of a tie and the two
        # sides pick different experts (measured: 2 of 4096 positions at the mid shape).
        diff_BL = (theirs.logits - out.logits).norm(dim=-1) / out.logits.norm(dim=-1)
        flipped = int((diff_BL > 1e-4).sum())
        if flipped > diff_BL.numel() // 200:
            raise SystemExit(f"{name}: logits differ from ours by more than 1e-4 (norm-relative) "
                             f"at {flipped} of {diff_BL.numel()} positions")  # fmt: skip
        typical = diff_BL.flatten().median().item()
        aux = other.model.config.router_aux_loss_coef * theirs.aux_loss
        parts.append(f"{name}: logits within {typical:.1e} (median position; {flipped} positions "
                     f"beyond 1e-4, routing near-ties), cross-entropy "
                     f"{(theirs.loss - aux).item():.6f}, router loss {aux.item():.4g}")  # fmt: skip
    return "; ".join(parts)


def built_ours(cfg: TrainConfig, vocab: int) -> Built:
    """Our stepper in a process set up as the train stage's, with its weights' digest: the
    parent checks they are the exported ones."""
    host_memory = keep_freed_host_memory()
    stepper = Stepper(cfg, cfg.model, vocab, backend="torch")
    step, facts = stepper.built()
    return step, {**facts, "weights": weights_digest(stepper.model), "host_memory": host_memory}


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 of the parameters' bytes, in order: two processes built the same model when
    their digests agree."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy())
    return h.hexdigest()


def built_theirs(
    cfg: TrainConfig, vocab: int, export_dir: Path, implementation: str, keep_memory: bool
) -> Built:
    host_memory = keep_freed_host_memory() if keep_memory else "host memory: glibc's defaults"
    step, facts = TransformersStepper(cfg, vocab, export_dir, implementation).built()
    return step, {**facts, "host_memory": host_memory}


def add_args(p: argparse.ArgumentParser) -> None:
    add_common_args(p)
    add_peer_memory_args(p)


def main() -> None:
    args = parsed(__doc__, add_args, IMPLEMENTATIONS)
    params = shaped_params(args)
    cfg, vocab = params.train, params.tokenize.vocab_size
    print_run_line(args, cfg)
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = Path(tmp)
        ours = Stepper(cfg, cfg.model, vocab, backend="torch")
        export(ours, vocab, export_dir)
        print(f"params: {ours.params['total']:,} total, {ours.params['active']:,} active")
        others = {f"hf-{i}": TransformersStepper(cfg, vocab, export_dir, i) for i in args.impls}
        print(check_same_function(ours, others))
        weights = weights_digest(ours.model)
        del ours, others  # the timed models are built again where they run
        builders = {"ours": partial(built_ours, cfg, vocab)} | {
            f"hf-{i}": partial(built_theirs, cfg, vocab, export_dir, i, peers_keep_memory(args))
            for i in args.impls
        }
        print(short_run_note(args.reps, args.warmups))
        with calls_in_processes(builders, args.threads, args.one_process) as (calls, facts):
            if facts["ours"]["weights"] != weights:
                raise SystemExit("the timed model's weights differ from the exported ones")
            times = rotation(calls, args.reps, args.warmups)
    fastest = min(builders.keys() - {"ours"}, key=lambda name: spread(times[name]).median)
    print("| model | tokens/s (median) | tokens/s (best) | step median ms | step IQR ms | "
          "ours over it: median [lower quartile] of per-rotation ratios |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for name, f in facts.items():
        st = spread(times[name])
        over = "-" if name == "ours" else format_ratio(ratio(times[name], times["ours"]))
        print(f"| {name} | {f['tokens_per_step'] / st.median:,.0f} | "
              f"{f['tokens_per_step'] / st.minimum:,.0f} | {st.median * 1e3:,.0f} | "
              f"{st.iqr * 1e3:,.0f} | {over} |")  # fmt: skip
    for name, f in facts.items():
        print(f"{name}: {f['host_memory']}")
    measured = ratio(times[fastest], times["ours"])
    print(f"ours over transformers' fastest ({fastest}): {against(measured, TARGETS[args.shape])}")


if __name__ == "__main__":
    main()
