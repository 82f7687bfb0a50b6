"""One rank of the expert-parallel checks; every rank also computes the single-process
reference on the whole global batch (same seed, same initial weights), so each compares itself.

    python tests/parallel/ep_worker.py SCENARIO DP EP [OUT_DIR]

Scenarios: ``train`` (the transformer, several clipped AdamW steps), ``train_fsdp2`` (the same
with FSDP2 sharding the dense weights), ``no_token`` (rank 1's experts get
no token), ``one_expert`` (every token to expert 0), ``global_balance`` (the global-batch
balance loss over accumulated micro-batches), ``reshard`` (DCP save/load across expert-
parallel sizes). Prints ``ok`` on success; any mismatch raises.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from pipeline.config import ModelConfig, MoEConfig, ParallelConfig
from pipeline.model import MoETransformer
from pipeline.model.moe import MoELayer
from pipeline.parallel import dcp
from pipeline.parallel.setup import (
    DP_DIM,
    EP_DIM,
    all_reduce_gradients,
    clip_grad_norm,
    expert_parameters,
    grad_norm,
    parallelize,
    shard_experts,
)

# fp32 tolerances: the parallel run sums the same products in another order (per-rank partial
# sums, all-reduce, all-to-all-fed grouped GEMMs), so agreement is to a few float32 ulps of the
# largest terms, not bit-exact.
FWD = {"rtol": 1e-5, "atol": 1e-6}
GRAD = {"rtol": 1e-4, "atol": 1e-6}

MODEL = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 1,
    "dense_hidden": 48,
    "max_seq_len": 16,
    "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 16, "aux_loss_weight": 0.01},
}
VOCAB, SEQ, PER_RANK = 64, 16, 2


def world_slice(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's share of a global batch (dim 0 split in rank order)."""
    return tensor.chunk(dist.get_world_size())[dist.get_rank()]


def full_grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient, expert blocks and FSDP2 shards gathered to full tensors."""
    shards = dcp.sharded_keys(model)
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        if name in shards:
            g = dcp.global_view(g, shards[name])
        grads[name] = g.full_tensor() if isinstance(g, DTensor) else g
    return grads


def check_close(actual: dict, expected: dict, tol: dict, what: str) -> None:
    assert actual.keys() == expected.keys(), what
    for key in expected:
        torch.testing.assert_close(
            actual[key], expected[key], **tol, msg=lambda m, key=key: f"{what} {key}: {m}"
        )


def scenario_train(mesh, sharding: str) -> None:
    """Forward, loss, every gradient, the gradient norm, the clipped gradients and the logged
    load match for 3 AdamW steps."""
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate(MODEL)
    reference = MoETransformer(cfg, VOCAB)
    model = copy.deepcopy(reference)
    layout = ParallelConfig(expert_parallel=mesh[EP_DIM].size(), sharding=sharding)
    parallelize(model, layout, mesh)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (reference, model)]
    world = dist.get_world_size()
    for step in range(3):
        idx = torch.randint(
            0, VOCAB, (PER_RANK * world, SEQ), generator=torch.Generator().manual_seed(step)
        )
        ref_out = reference(idx)
        ref_loss = ref_out.logits.logsumexp(-1).mean() + ref_out.aux_loss
        ref_loss.backward()
        out = model(world_slice(idx))
        loss = out.logits.logsumexp(-1).mean() + out.aux_loss
        loss.backward()
        all_reduce_gradients(model, mesh)
        logits = torch.cat(_all_gather(out.logits.detach()))
        torch.testing.assert_close(logits, ref_out.logits.detach(), **FWD)
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.testing.assert_close(mean_loss / world, ref_loss.detach(), **FWD)
        for got, want in zip(out.router_stats, ref_out.router_stats, strict=True):
            torch.testing.assert_close(got.load, want.load, **FWD)
            balance = got.losses["load_balance"].clone()
            dist.all_reduce(balance)  # the ranks' mean is the global-batch Switch loss
            torch.testing.assert_close(balance / world, want.losses["load_balance"], **FWD)
        check_close(full_grads(model), full_grads(reference), GRAD, f"step {step} grad")
        norm = grad_norm(model)
        torch.testing.assert_close(norm, grad_norm(reference), **GRAD)
        max_norm = 0.5 * norm.item()  # so that clipping acts
        torch.testing.assert_close(clip_grad_norm(model, max_norm), norm, rtol=0, atol=0)
        torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm)
        check_close(full_grads(model), full_grads(reference), GRAD, f"step {step} clipped")
        for opt in opts:
            opt.step()
            opt.zero_grad()


def scenario_global_balance(mesh) -> None:
    """``balance: global`` over two accumulated micro-batches, each rank holding its share of
    each global micro-batch: the balance loss (the mean over ranks), the step's counts and every
    gradient (the routers' and everything upstream of them: the loss is the balance loss alone)
    equal one process's on the whole micro-batches. Exact over ranks: each rank's loss takes the
    counts summed over the ranks, so only the summation order differs (hence FWD/GRAD)."""
    torch.manual_seed(0)
    moe = {**MODEL["moe"], "balance": "global", "aux_loss_weight": 1.0, "z_loss_weight": 0.0}
    reference = MoETransformer(ModelConfig.model_validate({**MODEL, "moe": moe}), VOCAB)
    model = copy.deepcopy(reference)
    parallelize(model, ParallelConfig(expert_parallel=mesh[EP_DIM].size()), mesh)
    world = dist.get_world_size()
    for micro in range(2):
        seed = torch.Generator().manual_seed(10 + micro)
        idx = torch.randint(0, VOCAB, (PER_RANK * world, SEQ), generator=seed)
        want, got = reference(idx), model(world_slice(idx))
        (want.aux_loss / 2).backward()  # the trainer's mean over the step's micro-batches
        (got.aux_loss / 2).backward()
        for mine, full in zip(got.router_stats, want.router_stats, strict=True):
            balance = mine.losses["global_balance"].clone()
            dist.all_reduce(balance)
            torch.testing.assert_close(balance / world, full.losses["global_balance"], **FWD)
    for mine, full in zip(model.moe_layers(), reference.moe_layers(), strict=True):
        counts = mine.step_counts_E + mine.micro_counts_E  # the same on every rank
        assert torch.equal(counts, full.step_counts_E + full.micro_counts_E)
    all_reduce_gradients(model, mesh)
    assert reference.blocks[0].ffn.router.weight.grad.abs().sum() > 0
    check_close(full_grads(model), full_grads(reference), GRAD, "global balance grad")


def _all_gather(t: torch.Tensor) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return parts


def skewed_layer(mesh, top_k: int) -> tuple[MoELayer, MoELayer, torch.Tensor]:
    """A reference layer and its expert-parallel copy whose router sends every token to experts
    ``0..top_k-1`` (positive inputs, router rows 0..k-1 positive, the others negative)."""
    torch.manual_seed(1)
    cfg = MoEConfig(num_experts=4, top_k=top_k, expert_hidden=16)
    reference = MoELayer(32, cfg, backend="torch")
    with torch.no_grad():
        for p in reference.experts.parameters():
            p.normal_(std=0.1)
        reference.router.weight.copy_(-torch.ones(4, 32) / 32)
        reference.router.weight[:top_k] = torch.ones(top_k, 32) / 32 + 0.01 * torch.randn(top_k, 32)
    model = copy.deepcopy(reference)
    holder = torch.nn.Module()
    holder.blocks = torch.nn.ModuleList([torch.nn.Module()])
    holder.blocks[0].ffn = model
    holder.moe_layers = lambda: [model]
    shard_experts(holder, mesh)
    x = torch.rand(2 * dist.get_world_size(), 8, 32) + 0.5
    return reference, model, x


def scenario_skewed(mesh, top_k: int) -> None:
    """Degenerate routing: outputs, input and router gradients, and every expert gradient
    (empty ones included) match the single-process layer, and nobody hangs."""
    reference, model, x = skewed_layer(mesh, top_k)
    x_ref = x.clone().requires_grad_()
    y_ref, _, stats = reference(x_ref)
    assert set(stats.load.nonzero().flatten().tolist()) == set(range(top_k))
    (y_ref.square().sum()).backward()
    x_loc = world_slice(x).clone().requires_grad_()
    y, _, _ = model(x_loc)
    (y.square().sum()).backward()
    torch.testing.assert_close(torch.cat(_all_gather(y.detach())), y_ref.detach(), **FWD)
    torch.testing.assert_close(torch.cat(_all_gather(x_loc.grad)), x_ref.grad, **GRAD)
    grads = {
        n: p.grad if p.grad is not None else torch.zeros_like(p)
        for n, p in model.named_parameters()
    }
    router_grad = grads["router.weight"].clone()
    dist.all_reduce(router_grad)  # the summed loss: gradients add over ranks
    torch.testing.assert_close(router_grad, reference.router.weight.grad, **GRAD)
    shard = model.experts.shard
    for name in ("w13", "w2"):
        full = dcp.global_view(grads[f"experts.{name}"], shard).full_tensor()
        torch.testing.assert_close(full, getattr(reference.experts, name).grad, **GRAD)


def scenario_reshard(mesh, out_dir: Path) -> None:
    """Save at EP = world, load into an unsharded model (EP=1), and the reverse: the loaded
    model computes exactly what the saved one did (same layout, hence same arithmetic)."""
    torch.manual_seed(2)
    cfg = ModelConfig.model_validate(MODEL)
    ep = ParallelConfig(expert_parallel=mesh[EP_DIM].size())
    full = MoETransformer(cfg, VOCAB)
    sharded = copy.deepcopy(full)
    parallelize(sharded, ep, mesh)
    seed = torch.Generator().manual_seed(9)
    idx = torch.randint(0, VOCAB, (PER_RANK * dist.get_world_size(), SEQ), generator=seed)
    want_full = full(idx).logits.detach()
    want_sharded = sharded(world_slice(idx)).logits.detach()

    dcp.save_model(sharded, out_dir / "ep")
    fresh_full = MoETransformer(cfg, VOCAB)  # other initial weights (the RNG moved on)
    dcp.load_model(fresh_full, out_dir / "ep")
    torch.testing.assert_close(fresh_full(idx).logits.detach(), want_full, rtol=0, atol=0)

    dcp.save_model(full, out_dir / "full")
    fresh_sharded = MoETransformer(cfg, VOCAB)
    parallelize(fresh_sharded, ep, mesh)
    dcp.load_model(fresh_sharded, out_dir / "full")
    got = fresh_sharded(world_slice(idx)).logits.detach()
    torch.testing.assert_close(got, want_sharded, rtol=0, atol=0)
    assert all(p.shape[0] == 4 // ep.expert_parallel for p in expert_parameters(fresh_sharded))

    gathered = dcp.full_model(sharded)  # collective: every rank gathers the experts
    torch.testing.assert_close(gathered(idx).logits.detach(), want_full, rtol=0, atol=0)


def main(scenario: str, dp: str, ep: str, out_dir: str = "") -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (int(dp), int(ep)), mesh_dim_names=(DP_DIM, EP_DIM))
    if scenario in ("train", "train_fsdp2"):
        scenario_train(mesh, "fsdp2" if scenario == "train_fsdp2" else "none")
    elif scenario == "no_token":
        scenario_skewed(mesh, top_k=2)
    elif scenario == "one_expert":
        scenario_skewed(mesh, top_k=1)
    elif scenario == "global_balance":
        scenario_global_balance(mesh)
    elif scenario == "reshard":
        scenario_reshard(mesh, Path(out_dir))
    else:
        raise ValueError(f"unknown scenario {scenario!r}")
    dist.destroy_process_group()
    print("ok")


if __name__ == "__main__":
    main(*sys.argv[1:])
