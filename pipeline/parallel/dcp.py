"""Distributed checkpoints (torch.distributed.checkpoint, DCP) that reshard across layouts.

A DCP checkpoint stores every tensor with its global shape and the offsets of the pieces each
rank wrote, so it loads into any layout. Expert-parallel blocks are plain ``(E / P, ...)``
parameters during training; :func:`as_global` presents them as views of the ``(E, ...)``
tensors (DTensors sharing the parameters' storage), which is all DCP needs to save them once
and to load them into another expert-parallel size, or into an ordinary unsharded model (a
single process, evaluation). FSDP2 weights are DTensors already; replicated weights are saved
once. :func:`consolidate` reads one back as an ordinary state dict in a single process
(``pipeline.train.consolidate`` turns a training checkpoint into ``model.safetensors``).

A checkpoint directory is published atomically (:func:`publish`): the ranks write into a
staging directory beside the target, which is renamed into place once complete, so a killed
save never leaves a partial ``last.ckpt/`` under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
from torch.distributed.tensor import DTensor, Replicate, Shard

from pipeline.model import MoETransformer
from pipeline.model.dispatch import ExpertShard
from pipeline.model.experts import GroupedExperts

METADATA_FILE = "meta.pt"  # Lightning's ModelParallelStrategy: the non-tensor checkpoint part


def sharded_keys(module: nn.Module) -> dict[str, ExpertShard]:
    """State-dict keys (relative to ``module``) of the expert-parallel blocks."""
    return {
        f"{name}.{weight}": m.shard
        for name, m in module.named_modules()
        if isinstance(m, GroupedExperts) and m.shard is not None
        for weight, _ in m.named_parameters()
    }


def global_view(local: torch.Tensor, shard: ExpertShard) -> DTensor:
    """This rank's block as a view of the whole ``(E, ...)`` tensor: replicated over the
    data-parallel dimension, split along dim 0 over the expert-parallel one. Shares the storage
    of ``local``, so loading into it writes the parameter in place."""
    shape = (shard.num_experts, *local.shape[1:])
    return DTensor.from_local(
        local,
        shard.mesh,
        [Replicate(), Shard(0)],
        run_check=False,
        shape=torch.Size(shape),
        stride=torch.empty(shape, device="meta").stride(),
    )


def as_global(state: dict[str, Any], shards: dict[str, ExpertShard]) -> dict[str, Any]:
    """``state`` with each expert block (and any per-expert tensor under its key, such as an
    optimizer's moments) shown as the global ``(E, ...)`` DTensor."""
    out = {}
    for key, value in state.items():
        shard = shards.get(key)
        if isinstance(value, dict):
            inner = {k: _wrap(v, shard) for k, v in value.items()} if shard else value
            out[key] = inner
        else:
            out[key] = _wrap(value, shard)
    return out


def _wrap(value: Any, shard: ExpertShard | None) -> Any:
    if shard is None or not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    return global_view(value, shard)


def as_local(state: dict[str, Any], shards: dict[str, ExpertShard]) -> dict[str, Any]:
    """Inverse of :func:`as_global` (FSDP2's own DTensors are left alone)."""
    out = {}
    for key, value in state.items():
        if key not in shards:
            out[key] = value
        elif isinstance(value, dict):
            out[key] = {k: _unwrap(v) for k, v in value.items()}
        else:
            out[key] = _unwrap(value)
    return out


def _unwrap(value: Any) -> Any:
    return value.to_local() if isinstance(value, DTensor) else value


def model_state(module: nn.Module) -> dict[str, Any]:
    """``module.state_dict()`` in the global view, ready for ``dcp.save`` / ``dcp.load``."""
    return as_global(module.state_dict(), sharded_keys(module))


def save_model(module: nn.Module, directory: Path) -> None:
    dcp.save({"state_dict": model_state(module)}, checkpoint_id=str(directory))


def load_model(module: nn.Module, directory: Path) -> None:
    """Load in place, whatever layout wrote the checkpoint (collective when distributed)."""
    shards = sharded_keys(module)
    state = {"state_dict": as_global(module.state_dict(), shards)}
    dcp.load(state, checkpoint_id=str(directory))
    module.load_state_dict(as_local(state["state_dict"], shards))


def staging_dir(target: Path) -> Path:
    """Where the ranks write the checkpoint that will become ``target`` (same filesystem)."""
    return target.with_name(f".{target.name}.partial")


def previous_dir(target: Path) -> Path:
    """Where :func:`publish` keeps the previous ``target`` during its second rename."""
    return target.with_name(f".{target.name}.previous")


def publish(staging: Path, target: Path) -> None:
    """Move the complete checkpoint ``staging`` onto ``target`` (one process, once every rank
    has written). A directory cannot be renamed over a non-empty one, so the previous checkpoint
    is renamed aside first and deleted last: at any moment ``target`` is absent or complete,
    and if a kill falls between the two renames :func:`existing_checkpoint` finds the previous
    one aside."""
    previous = previous_dir(target)
    remove(previous)
    if target.exists():
        os.replace(target, previous)
    os.replace(staging, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the renames survive a power cut, not only a killed process
    finally:
        os.close(directory)
    remove(previous)


def existing_checkpoint(target: Path) -> Path | None:
    """``target`` if it exists, else the previous checkpoint a kill left aside, else None.
    Reads only: every rank of a starting job may call it at once."""
    for path in (target, previous_dir(target)):
        if path.exists():
            return path
    return None


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def full_model(model: MoETransformer) -> MoETransformer:
    """An ordinary unsharded copy of ``model`` on the CPU (collective: call on every rank)."""
    state = {
        key: value.full_tensor() if isinstance(value, DTensor) else value
        for key, value in model_state(model).items()
    }
    full = MoETransformer(model.cfg, model.vocab_size)
    full.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    return full


def consolidate(directory: Path) -> dict[str, Any]:
    """A DCP checkpoint directory as one in-memory torch.save-style dict (single process)."""
    with tempfile.TemporaryDirectory() as tmp:
        single = Path(tmp) / "checkpoint.pt"
        dcp_to_torch_save(str(directory), str(single))
        return torch.load(single, map_location="cpu", weights_only=True)
