"""What ``configure_model`` applies to the model, and the gradient work it then owes.

Layout (see :class:`pipeline.config.ParallelConfig`): every rank trains on its own slice of the
global batch. With ``sharding: none`` the dense weights are plain replicas and
:func:`all_reduce_gradients` averages their gradients over the world once per optimizer step
(what DDP would do; DDP itself cannot wrap a model whose experts differ between ranks). With
``sharding: fsdp2`` FSDP2's ``fully_shard`` owns every weight and its gradient reduction.

Expert gradients. On rank r the backward all-to-all already sums, into r's local experts, the
gradients of the losses of every rank of r's expert-parallel group. The objective is the mean
of the W ranks' losses, so the expert gradient is that sum, summed again over the
data-parallel replicas of the same experts, divided by W.

Gradient clipping must see one global norm on every rank: dense gradients are identical across
ranks after the reduction, each expert block lives on one rank of an expert-parallel group, so
the squared norm is the dense part plus the expert part summed over that group.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.distributed._composable import checkpoint
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard

from pipeline.config import ParallelConfig
from pipeline.model import MoETransformer
from pipeline.parallel.expert import DP_DIM, EP_DIM, ExpertShard


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
        for block in model.blocks:
            fully_shard(block, mesh=mesh[DP_DIM])
        fully_shard(model, mesh=mesh[DP_DIM])


def shard_experts(model: MoETransformer, mesh: DeviceMesh) -> None:
    """Keep only this rank's experts: ``w1, w3, w2`` become ``(E / P, ...)`` slices of the full
    tensors (initialised identically on every rank before this call)."""
    for layer in model.moe_layers():
        shard = ExpertShard(mesh, layer.cfg.num_experts)
        for name in ("w1", "w3", "w2"):
            full = getattr(layer, name)
            setattr(layer, name, nn.Parameter(full.detach()[shard.local_slice].clone()))
        layer.expert_shard = shard


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that hold one expert-parallel block of experts (none without EP)."""
    return [
        getattr(m, name)
        for m in model.modules()
        if getattr(m, "expert_shard", None) is not None
        for name in ("w1", "w3", "w2")
    ]


def all_reduce_gradients(model: nn.Module, mesh: DeviceMesh) -> None:
    """Average the step's gradients over the world (see the module docstring); one collective
    per kind of parameter. A parameter without a gradient counts as zero (an expert that got
    no token), so every rank reduces the same buffers."""
    experts = expert_parameters(model)
    expert_ids = {id(p) for p in experts}
    dense = [p for p in model.parameters() if id(p) not in expert_ids]
    world = dist.get_world_size()
    _reduce(dense, None, world)
    if experts:
        _reduce(experts, mesh.get_group(DP_DIM), world)


def _reduce(params: list[nn.Parameter], group, divisor: int) -> None:
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=group)
    flat /= divisor
    for p, g in zip(params, _unflatten_dense_tensors(flat, grads), strict=True):
        p.grad = g


def clip_grad_norm(model: nn.Module, max_norm: float, mesh: DeviceMesh) -> torch.Tensor:
    """Clip by the global norm of the reduced gradients; returns that norm."""
    experts = expert_parameters(model)
    expert_ids = {id(p) for p in experts}
    params = [p for p in model.parameters() if p.grad is not None]
    dense_sq, expert_sq = (torch.zeros((), dtype=torch.float64) for _ in range(2))
    for p in params:
        square = p.grad.double().square().sum().cpu()
        if id(p) in expert_ids:
            expert_sq += square
        else:
            dense_sq += square
    expert_sq = expert_sq.to(params[0].device)
    dist.all_reduce(expert_sq, group=mesh.get_group(EP_DIM))
    norm = (dense_sq.to(expert_sq.device) + expert_sq).sqrt().float()
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
