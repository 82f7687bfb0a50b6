"""Expert-parallel dispatch: tokens travel to the rank that holds their expert and back.

An expert-parallel group of P ranks splits the E experts of every MoE layer into P contiguous
blocks of ``L = E / P``; rank r holds experts ``[r·L, (r+1)·L)``. Each rank routes its own
tokens, then:

1. counts: the per-expert assignment counts ``(E,)`` go through an all-to-all, so each rank
   learns how many rows every peer will send to each of its local experts (the uneven splits
   of the next two collectives);
2. dispatch: the assignment rows, sorted by expert (hence by destination rank), travel by
   ``all_to_all_single_autograd`` (its backward is the reverse all-to-all of the gradients);
3. the local experts run through the ordinary backend interface with weight 1 per row;
4. combine: the outputs return by the reverse all-to-all, are weighted by the routing
   weights on the source rank (so the router gets its gradient there) and summed per token.

Every rank calls the same collectives in the same order whatever it receives: a rank or an
expert with no token sends and receives empty splits, which gloo and NCCL accept, and the empty
rows stay in the autograd graph, so the backward all-to-alls run on every rank too.

Legend: T tokens, K slots, S kept assignments of this rank, M rows received, E experts,
L local experts, P expert-parallel ranks, D model dim, F expert hidden.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard

# Lightning's ModelParallelStrategy names its mesh dimensions for tensor parallelism; the
# project uses the second one for expert parallelism (no tensor parallelism is applied).
DP_DIM, EP_DIM = "data_parallel", "tensor_parallel"


@dataclass(frozen=True)
class ExpertShard:
    """This rank's block of experts on a ``(data_parallel, expert_parallel)`` device mesh."""

    mesh: DeviceMesh
    num_experts: int

    @property
    def group(self) -> dist.ProcessGroup:
        return self.mesh.get_group(EP_DIM)

    @property
    def rank(self) -> int:
        return self.mesh.get_local_rank(EP_DIM)

    @property
    def size(self) -> int:
        return self.mesh[EP_DIM].size()

    @property
    def local_experts(self) -> int:
        return self.num_experts // self.size

    @property
    def local_slice(self) -> slice:
        return slice(self.rank * self.local_experts, (self.rank + 1) * self.local_experts)

    def as_dtensor(self, local: torch.Tensor) -> DTensor:
        """The local block as a view of the whole ``(E, ...)`` tensor: replicated over the
        data-parallel dimension, split along dim 0 over the expert-parallel one. Shares the
        storage of ``local``, so loading into it writes the parameter in place."""
        shape = (self.num_experts, *local.shape[1:])
        return DTensor.from_local(
            local,
            self.mesh,
            [Replicate(), Shard(0)],
            run_check=False,
            shape=torch.Size(shape),
            stride=torch.empty(shape, device="meta").stride(),
        )


@torch.no_grad()
def _exchange_counts(ids_TK: torch.Tensor, shard: ExpertShard):
    """Sort order of the kept assignments, rows to send per rank, rows to receive per rank,
    and the local expert id of every received row."""
    flat = ids_TK.reshape(-1)
    counts = torch.bincount(flat + 1, minlength=shard.num_experts + 1)  # bin 0: empty slots
    order_S = torch.argsort(flat, stable=True)[int(counts[0]) :]
    counts_E = counts[1:].contiguous()
    recv_PL = torch.empty_like(counts_E)
    dist.all_to_all_single(recv_PL, counts_E, group=shard.group)  # equal splits of L each
    recv_PL = recv_PL.view(shard.size, shard.local_experts)
    local_ids_M = torch.arange(shard.local_experts, device=flat.device).repeat(shard.size)
    local_ids_M = local_ids_M.repeat_interleave(recv_PL.reshape(-1))
    send_P = counts_E.view(shard.size, shard.local_experts).sum(1)
    return order_S, send_P.tolist(), recv_PL.sum(1).tolist(), local_ids_M


def expert_parallel_experts(
    backend,
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    ids_TK: torch.Tensor,
    w1_LFD: torch.Tensor,
    w3_LFD: torch.Tensor,
    w2_LDF: torch.Tensor,
    shard: ExpertShard,
) -> torch.Tensor:
    """``Σ_k weights[t, k] · SwiGLU_{ids[t, k]}(x[t])`` with the experts spread over the group:
    the backend contract of :mod:`pipeline.ops`, ids global, weights local to this rank."""
    order_S, send, recv, local_ids_M = _exchange_counts(ids_TK, shard)
    tok_S = order_S // ids_TK.shape[1]
    xs_SD = x_TD.index_select(0, tok_S)
    xr_MD = all_to_all_single_autograd(xs_SD, recv, send, shard.group)
    ones_M1 = xr_MD.new_ones(local_ids_M.shape[0], 1)
    yr_MD = backend(xr_MD, ones_M1, local_ids_M.unsqueeze(1), w1_LFD, w3_LFD, w2_LDF)
    ys_SD = all_to_all_single_autograd(yr_MD.contiguous(), send, recv, shard.group)
    w_S1 = weights_TK.reshape(-1)[order_S].unsqueeze(1).to(ys_SD.dtype)
    return torch.zeros_like(x_TD).index_add(0, tok_S, ys_SD * w_S1)
