"""Global-batch balance under gradient accumulation, against the full batch: the trainer's
routing pre-pass (exact), Megatron-Core's estimate (each micro-batch balances with the counts of
the step so far) and the per-micro-batch loss.

    python bench/global_balance.py [--trained 0 100] [--accum 2 4 8] [--batches 3] [--tiny]
    python bench/global_balance.py --time 4 [--reps 5]      # the pre-pass's cost, k = 4

The model is ``params.yaml``'s ``train.model`` (or the tests' tiny one with ``--tiny``), trained
for each ``--trained`` number of AdamW steps (cross-entropy + the default micro balance loss)
on generated counting documents (random start and stride, as tests/train/tiny.py writes), so
that its routers have specialised somewhat; then, on ``--batches`` fresh global batches of
``micro_batch_size × max(accum)`` windows, the balance loss alone (weight 1, no z-loss, no
cross-entropy) is run once as one micro-batch (the exact full-batch loss: with one micro-batch
every scope is the full-batch loss) and as ``k`` accumulated micro-batches: ``global`` with the
step's counts from the routing pre-pass (:mod:`pipeline.train.step_routing`), ``global`` with
the counts so far (what the layer does without the pre-pass), and ``micro``. Reported, as means
over the batches: the deviation of the loss (the mean of the micro-batch values against the
full-batch value), of each router weight's gradient (the largest over layers) and of the whole
gradient of the balance loss (every parameter it reaches), each ``|a - b| / |b|`` in the L2
norm; and the deviation of each router's gradient
of the training loss, cross-entropy + ``aux_loss_weight`` × balance (the cross-entropy's part is
the same for any split, so this is the balance deviation scaled by the weight, against the
whole gradient: what the optimizer sees). fp32, CPU, one process.

``--time k``: the median wall time of one optimizer step of ``k`` micro-batches (cross-entropy +
balance, forward and backward) with ``balance: global`` with and without the routing pre-pass,
in alternating repetitions, and their ratio: the pre-pass's cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import ModelConfig, load_params  # noqa: E402
from pipeline.model import MoETransformer  # noqa: E402
from pipeline.train.step_routing import step_expert_counts  # noqa: E402

VARIANTS = {  # name: (balance, routing pre-pass)
    "global, pre-pass": ("global", True),
    "global, counts so far": ("global", False),
    "micro": ("micro", False),
}

TINY = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "dense_hidden": 64,
        "max_seq_len": 32, "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32}}  # fmt: skip


def counting_windows(vocab: int, count: int, length: int, g: torch.Generator) -> torch.Tensor:
    """(count, length + 1) windows of a stream of counting documents separated by token 0."""
    stream: list[int] = []
    while len(stream) < count * (length + 1):
        start, stride = (int(v) for v in torch.randint(1, vocab, (2,), generator=g))
        size = int(torch.randint(20, 60, (), generator=g))
        stream += [1 + (start + (1 + stride % 3) * i) % (vocab - 1) for i in range(size)] + [0]
    return torch.tensor(stream[: count * (length + 1)]).view(count, length + 1)


def train_steps(model: MoETransformer, steps: int, batch: int, length: int, g) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for _ in range(steps):
        windows = counting_windows(model.vocab_size, batch, length, g)
        out = model(windows[:, :-1])
        ce = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1), windows[:, 1:].flatten())
        (ce + out.aux_loss).backward()
        optimizer.step()
        optimizer.zero_grad()
        model.update_router_biases()


def balance_step(model: MoETransformer, idx_BL: torch.Tensor, k: int, variant: str):
    """The balance loss alone over one optimizer step of ``k`` micro-batches: the mean of the
    micro-batch values and every gradient it leaves."""
    scope, prepass = VARIANTS[variant]
    for layer in model.moe_layers():
        layer.cfg = layer.cfg.model_copy(
            update={"balance": scope, "aux_loss_weight": 1.0, "z_loss_weight": 0.0}
        )
    chunks = idx_BL.chunk(k)
    if prepass:
        counts = step_expert_counts(model, list(chunks))
        for layer, counts_E in zip(model.moe_layers(), counts, strict=True):
            layer.known_step_counts_E = counts_E
    model.zero_grad(set_to_none=True)
    values = []
    for chunk in chunks:
        aux = model(chunk).aux_loss
        (aux / k).backward()
        values.append(aux.item())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    for layer in model.moe_layers():  # end the step without moving anything
        layer.step_counts_E.zero_()
        layer.micro_counts_E.zero_()
        layer.known_step_counts_E = None
    return sum(values) / k, grads


def cross_entropy_grads(model: MoETransformer, windows: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    logits = model(windows[:, :-1]).logits
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows[:, 1:].flatten()).backward()
    for layer in model.moe_layers():
        layer.step_counts_E.zero_()
        layer.micro_counts_E.zero_()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def time_prepass(model: MoETransformer, windows: torch.Tensor, k: int, reps: int) -> None:
    for layer in model.moe_layers():
        layer.cfg = layer.cfg.model_copy(update={"balance": "global"})
    chunks = windows.chunk(k)
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(reps):
        for prepass in (False, True):
            started = time.perf_counter()
            if prepass:
                counts = step_expert_counts(model, [c[:, :-1] for c in chunks])
                for layer, counts_E in zip(model.moe_layers(), counts, strict=True):
                    layer.known_step_counts_E = counts_E
            for chunk in chunks:
                out = model(chunk[:, :-1])
                ce = torch.nn.functional.cross_entropy(
                    out.logits.flatten(0, 1), chunk[:, 1:].flatten()
                )
                ((ce + out.aux_loss) / k).backward()
            model.zero_grad(set_to_none=True)
            model.update_router_biases()
            seconds[prepass].append(time.perf_counter() - started)
    plain, with_prepass = (statistics.median(seconds[p]) for p in (False, True))
    print(f"k = {k}, {windows.shape[0] // k} windows of {windows.shape[1] - 1} tokens per "
          f"micro-batch, {reps} reps: step {plain:.3f} s, with the pre-pass {with_prepass:.3f} s "
          f"(x{with_prepass / plain:.3f})")  # fmt: skip


def deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trained", type=int, nargs="+", default=[0, 100])
    ap.add_argument("--accum", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--time", type=int, metavar="K", help="time the pre-pass at accumulation K")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    train = load_params().train
    cfg = ModelConfig.model_validate(TINY) if args.tiny else train.model
    length = cfg.max_seq_len if args.tiny else train.seq_len
    micro = 4 if args.tiny else train.micro_batch_size
    vocab = 300 if args.tiny else 4096
    if args.time:
        torch.manual_seed(0)
        model = MoETransformer(cfg, vocab).train()
        windows = counting_windows(vocab, micro * args.time, length, torch.Generator())
        time_prepass(model, windows, args.time, args.reps)
        return
    print(f"model: {'tiny' if args.tiny else 'params.yaml'} (E={cfg.moe.num_experts}, "
          f"k={cfg.moe.top_k}, {cfg.n_layers} layers), global batch {micro * max(args.accum)} "
          f"windows of {length} tokens, {args.batches} batches")  # fmt: skip
    weight = cfg.moe.aux_loss_weight
    print("| trained steps | k | tokens / micro-batch | scope | loss | router grad (max layer) "
          f"| all grads | router grad of CE + {weight:g} · balance |\n"
          "|---|---|---|---|---|---|---|---|")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = MoETransformer(cfg, vocab).train()
    done = 0
    for trained in sorted(args.trained):
        train_steps(model, trained - done, micro, length, g)
        done = trained
        windows = [
            counting_windows(vocab, micro * max(args.accum), length, g) for _ in range(args.batches)
        ]
        batches = [w[:, :-1] for w in windows]
        full = [balance_step(model, idx, 1, "micro") for idx in batches]
        ce = [cross_entropy_grads(model, w) for w in windows]
        routers = [n for n in full[0][1] if n.endswith("router.weight")]
        for k in args.accum:
            for variant in VARIANTS:
                rows = []
                for idx, (loss_1, grads_1), ce_grads in zip(batches, full, ce, strict=True):
                    loss_k, grads_k = balance_step(model, idx, k, variant)
                    flat = [
                        torch.cat([g_[n].flatten() for n in grads_1]) for g_ in (grads_k, grads_1)
                    ]
                    rows.append((
                        abs(loss_k - loss_1) / loss_1,
                        max(deviation(grads_k[n], grads_1[n]) for n in routers),
                        deviation(*flat),
                        max(deviation(ce_grads[n] + weight * grads_k[n],
                                      ce_grads[n] + weight * grads_1[n]) for n in routers),
                    ))  # fmt: skip
                means = [statistics.mean(col) for col in zip(*rows, strict=True)]
                tokens = micro * max(args.accum) // k * length
                print(f"| {trained} | {k} | {tokens} | {variant} | "
                      + " | ".join(f"{m:.2e}" for m in means) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
