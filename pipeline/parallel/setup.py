"""What ``configure_model`` applies to the model, and the gradient work it then owes.

Layout (see :class:`pipeline.config.ParallelConfig`): every rank trains on its own slice of the
global batch. With ``sharding: none`` the dense weights are plain replicas and
:func:`all_reduce_gradients` averages their gradients over the world once per optimizer step
(what DDP would do; DDP itself cannot wrap a model whose experts differ between ranks). With
``sharding: fsdp2`` FSDP2's ``fully_shard`` owns every dense weight, sharded over the whole
world (the flattened ``data_parallel × expert_parallel`` mesh), and its reduce-scatter averages
their gradients over the world: sharding over the data-parallel dimension alone would average
only over the ranks of one expert-parallel position and miss the other positions' batches.
Expert blocks are left out of FSDP2 (they are sharded already) and reduced here.

Expert gradients. On rank r the backward all-to-all already sums, into r's local experts, the
gradients of the losses of every rank of r's expert-parallel group. The objective is the mean
of the W ranks' losses, so the expert gradient is that sum, summed again over the
data-parallel replicas of the same experts, divided by W.

Gradient norm (logged, and clipped by): :func:`grad_norm` sums each gradient's squares over the
ranks holding the other pieces of it and never over its replicas, so every rank gets the norm
of the whole gradient whatever the layout.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from pipeline.config import ParallelConfig
from pipeline.model import MoETransformer
from pipeline.model.dispatch import AllToAllDispatcher, ExpertShard
from pipeline.model.experts import GroupedExperts

# Lightning's ModelParallelStrategy names its mesh dimensions for tensor parallelism; the
# project uses the second one for expert parallelism (no tensor parallelism is applied).
DP_DIM, EP_DIM = "data_parallel", "tensor_parallel"
WORLD_DIM = "world"  # the flattened (data_parallel, expert_parallel) mesh FSDP2 shards over


def parallelize(model: MoETransformer, cfg: ParallelConfig, mesh: DeviceMesh | None) -> None:
    """Apply the layout in place. ``mesh`` is None outside ``strategy: model_parallel``; the
    router statistics are then still aggregated over the world of a DDP run."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for layer in model.moe_layers():
            layer.stats_group = dist.group.WORLD
    if mesh is not None and mesh[EP_DIM].size() > 1:
        shard_experts(model, mesh)
    if cfg.activation_checkpointing:
        for block in model.blocks:
            checkpoint(block)
    if mesh is not None and cfg.sharding == "fsdp2":
        shard_dense(model, mesh)


def shard_dense(model: MoETransformer, mesh: DeviceMesh) -> None:
    """FSDP2 ``fully_shard`` per block and at the root over the flattened world mesh, expert
    blocks excluded (see the module docstring)."""
    world_mesh = mesh._flatten(WORLD_DIM)
    experts = set(expert_parameters(model))
    for block in model.blocks:
        fully_shard(block, mesh=world_mesh, ignored_params=experts)
    fully_shard(model, mesh=world_mesh, ignored_params=experts)


def expert_shard(mesh: DeviceMesh, num_experts: int) -> ExpertShard:
    """This rank's block of ``num_experts`` on the mesh's expert-parallel dimension."""
    return ExpertShard(
        num_experts=num_experts,
        rank=mesh.get_local_rank(EP_DIM),
        size=mesh[EP_DIM].size(),
        group=mesh.get_group(EP_DIM),
        mesh=mesh,
    )


def shard_experts(model: MoETransformer, mesh: DeviceMesh) -> None:
    """Keep only this rank's experts: ``w13, w2`` become ``(E / P, ...)`` slices of the full
    tensors (initialised identically on every rank before this call), and tokens reach them by
    all-to-all."""
    for layer in model.moe_layers():
        shard = expert_shard(mesh, layer.cfg.num_experts)
        for name, full in list(layer.experts.named_parameters()):
            setattr(layer.experts, name, nn.Parameter(full.detach()[shard.local_slice].clone()))
        layer.experts.shard = shard
        layer.dispatcher = AllToAllDispatcher(shard)


def sharded_experts(model: nn.Module) -> list[GroupedExperts]:
    """The expert modules that hold one expert-parallel block (none without EP)."""
    return [m for m in model.modules() if isinstance(m, GroupedExperts) and m.shard is not None]


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that hold one expert-parallel block of experts (none without EP)."""
    return [p for experts in sharded_experts(model) for p in experts.parameters()]


def all_reduce_gradients(model: nn.Module, mesh: DeviceMesh) -> None:
    """Average the step's gradients over the world (see the module docstring) for every
    parameter FSDP2 does not own; one collective per kind of parameter. A parameter without a
    gradient counts as zero (an expert that got no token), so every rank reduces the same
    buffers."""
    experts = expert_parameters(model)
    expert_ids = {id(p) for p in experts}
    dense = [
        p for p in model.parameters() if id(p) not in expert_ids and not isinstance(p, DTensor)
    ]
    world = dist.get_world_size()
    _reduce(dense, None, world)
    _reduce(experts, mesh.get_group(DP_DIM), world)


def _reduce(params: list[nn.Parameter], group, divisor: int) -> None:
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    flat /= divisor
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
        p.grad = g


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The 2-norm of all of ``model``'s gradients as one vector, identical on every rank, on
    any layout (no collective in a single process). Parameters are grouped by the process
    groups over which their pieces differ: a DTensor's sharded mesh dimensions,
    an expert block's expert-parallel group, none for a replica. Every rank walks the same
    parameters in the same order, so the collectives match."""
    shards = {
        id(p): experts.shard for experts in sharded_experts(model) for p in experts.parameters()
    }
    squares: dict[tuple, torch.Tensor] = {}
    for p in model.parameters():
        groups, local = _pieces(p, shards.get(id(p)))
        square = local.detach().double().square().sum() if local is not None else 0.0
        squares[groups] = squares.get(groups, 0.0) + square
    total = None
    for groups, square in squares.items():
        square = torch.as_tensor(square, dtype=torch.float64, device=_device(model))
        for group in groups:
            dist.all_reduce(square, group=group)
        total = square if total is None else total + square
    return total.sqrt().float()


def _pieces(p: nn.Parameter, shard: ExpertShard | None):
    """The process groups that hold the other pieces of ``p``'s gradient, and this rank's
    piece (None without a gradient)."""
    grad = p.grad
    if isinstance(p, DTensor):
        groups = tuple(
            p.device_mesh.get_group(dim)
            for dim, placement in enumerate(p.placements)
            if not placement.is_replicate()
        )
        return groups, grad.to_local() if grad is not None else None
    return ((shard.group,) if shard is not None else ()), grad


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Scale the gradients so that their global norm is at most ``max_norm`` (the rule of
    ``torch.nn.utils.clip_grad_norm_``, without a host sync); returns the norm before."""
    norm = grad_norm(model)
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for p in model.parameters():
        if p.grad is not None:
            local = p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad
            local.mul_(coef.to(local.dtype))
    return norm
