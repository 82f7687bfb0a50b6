"""Lightning's ``ModelParallelStrategy`` on a ``data_parallel × expert_parallel`` mesh.

Lightning builds the device mesh (``(data_parallel, tensor_parallel)``; its second dimension
carries expert parallelism here), initialises the process group (NCCL on GPUs, gloo on CPUs)
under its own launcher, ``torchrun`` or SLURM, calls ``configure_model`` and saves
checkpoints as DCP directories. This subclass resolves ``data_parallel: auto`` against the real
world size, saves/loads the expert blocks in their global view
(:mod:`pipeline.parallel.dcp`), so a checkpoint reloads under another layout, and
publishes each checkpoint directory atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.checkpoint.state_dict import (
    _init_optim_state,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)

from pipeline.config import ConfigError, TrainConfig, check_parallel_layout
from pipeline.parallel.dcp import (
    METADATA_FILE,
    as_global,
    as_local,
    publish,
    remove,
    sharded_keys,
    staging_dir,
)


class MeshStrategy(ModelParallelStrategy):
    def __init__(self, cfg: TrainConfig):
        par = cfg.runtime.parallel
        super().__init__(
            data_parallel_size=par.data_parallel,
            tensor_parallel_size=par.expert_parallel,
            save_distributed_checkpoint=True,
        )
        self.cfg = cfg

    def setup_environment(self) -> None:
        world = self.num_nodes * self.num_processes
        try:
            self._data_parallel_size, _ = check_parallel_layout(self.cfg, world)
        except ValueError as exc:
            raise ConfigError(f"params.yaml: {exc}") from None
        super().setup_environment()

    def save_checkpoint(self, checkpoint, filepath, storage_options=None) -> None:
        """Every rank writes its shards into the staging directory; rank zero renames it onto
        ``filepath`` once all have finished (a shared filesystem, as DCP requires anyway)."""
        target = Path(self.broadcast(filepath))
        staging = staging_dir(target)
        if self.is_global_zero:
            remove(staging)  # what a killed save left
        self.barrier("checkpoint-staging")
        super().save_checkpoint(checkpoint, staging, storage_options)
        self.barrier("checkpoint-written")
        if self.is_global_zero:
            publish(staging, target)
        self.barrier("checkpoint-published")

    def lightning_module_state_dict(self) -> dict[str, Any]:
        module = self.lightning_module
        return as_global(module.state_dict(), sharded_keys(module))

    def optimizer_state(self, optimizer) -> dict[str, Any]:
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer
        module = self.lightning_module
        return _global_optimizer_state(module, optimizer, sharded_keys(module))

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict[str, Any]:
        """Load weights and optimizer state in place (resharding as needed); return the rest."""
        path = Path(self.broadcast(checkpoint_path))
        module, shards = self.lightning_module, sharded_keys(self.lightning_module)
        state: dict[str, Any] = {"state_dict": as_global(module.state_dict(), shards)}
        for i, optimizer in enumerate(self.optimizers):
            _init_optim_state(optimizer)  # a fresh optimizer has no state to load into yet
            state[f"optimizer_{i}"] = _global_optimizer_state(module, optimizer, shards)
        dcp.load(state, checkpoint_id=str(path))
        module.load_state_dict(as_local(state["state_dict"], shards))
        for i, optimizer in enumerate(self.optimizers):
            loaded = state[f"optimizer_{i}"]
            local = {**loaded, "state": as_local(loaded["state"], shards)}
            set_optimizer_state_dict(module, optimizer, local)
        return torch.load(path / METADATA_FILE, map_location="cpu", weights_only=True)


def _global_optimizer_state(module, optimizer, shards) -> dict[str, Any]:
    """The optimizer state keyed by parameter name (what DCP matches across layouts), the
    expert blocks' moments in their global view."""
    state = get_optimizer_state_dict(module, optimizer)
    return {**state, "state": as_global(state["state"], shards)}
