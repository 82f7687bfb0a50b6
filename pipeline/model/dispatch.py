"""Dispatch and combine: moving routed tokens to their experts' rows and the results back.

A dispatcher turns one layer's routing decisions ``(weights_TK, ids_TK)`` into
:class:`ExpertRows`, the token rows grouped by expert as the experts read them
(:class:`~pipeline.model.experts.GroupedExperts`), and after the experts ran, combines their
output rows back into one output per token: ``y[t] = Σ_k weights[t, k] · expert_{ids[t, k]}(x[t])``.
Two dispatchers share that interface (as torchtitan's ``token_dispatcher.py`` does):

- :class:`LocalDispatcher`: all experts on this rank. Grouping is a stable sort (``torch``), the
  histogram + prefix-sum kernel (``triton``) or a per-expert loop (``reference``), chosen by the
  resolved backend (:mod:`pipeline.model.backends`). No rows are copied at dispatch: the experts
  gather ``x[tok_S]`` while loading (fused into the Triton GEMM, an ``index_select`` inside the
  torch op), and combine sums the rows back per token.
- :class:`AllToAllDispatcher`: expert parallelism. An expert-parallel group of P ranks splits the
  E experts into P contiguous blocks of ``e = E / P``; rank r holds experts ``[r·e, (r+1)·e)``
  (:class:`ExpertShard`). Each rank routes its own tokens, then

  1. counts: the per-expert assignment counts ``(E,)`` go through an all-to-all, so each rank
     learns how many rows every peer will send to each of its local experts (the uneven
     splits of the next two collectives);
  2. dispatch: the assignment rows, sorted by expert (hence by destination rank), travel by
     ``all_to_all_single_autograd`` (its backward is the reverse all-to-all of the gradients),
     and a :class:`LocalDispatcher` groups the received rows by local expert;
  3. combine: the local combine, the reverse all-to-all, then the routing weights are applied
     on the source rank (so the router gets its gradient there) and the rows summed per token.

  Every rank calls the same collectives in the same order whatever it receives: a rank or an
  expert with no token sends and receives empty splits, which gloo and NCCL accept, and the
  empty rows stay in the autograd graph, so the backward all-to-alls run on every rank too.

Where the routing weight is applied is the backend's choice, recorded in :class:`ExpertRows`:
the torch experts scale their hidden rows (cheaper when F < D), the reference and Triton paths
weight the outputs in combine. The torch experts also sum the rows per token themselves
(:mod:`pipeline.ops.torch_experts`: no S×D output buffer), so their combine passes the
``(T, D)`` result on. The result is the same function.

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots, S grouped rows of this rank, M rows this
rank receives from its peers, E experts, e local experts, P expert-parallel ranks, D model dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed._functional_collectives import all_to_all_single_autograd
from torch.distributed.device_mesh import DeviceMesh

from pipeline.ops import reference, torch_dispatch


@dataclass
class ExpertRows:
    """The token rows of one dispatch, grouped by expert.

    Row ``s`` of the grouped buffer is ``x_TD[tok_S[s]]``; rows ``offs_E[e-1]:offs_E[e]``
    belong to local expert ``e``. ``backend`` made the grouping and must run the experts and
    the combine. ``weight_S``: each row's routing weight, for the torch experts to apply to
    their hidden rows (reference: combine applies it; None: unweighted rows). ``row_TK``,
    ``weights_TK``: the Triton path's map from (token, slot) to row, and the weights its
    combine applies.
    """

    backend: str
    x_TD: torch.Tensor
    tok_S: torch.Tensor
    offs_E: torch.Tensor
    weight_S: torch.Tensor | None = None
    row_TK: torch.Tensor | None = None
    weights_TK: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return self.x_TD.shape[0]


class TokenDispatcher(ABC):
    """Routed tokens → rows grouped by this rank's experts → one output per token."""

    @abstractmethod
    def dispatch(
        self,
        x_TD: torch.Tensor,
        weights_TK: torch.Tensor | None,
        ids_TK: torch.Tensor,
        backend: str,
    ) -> tuple[ExpertRows, object]:
        """``(rows for the experts, what combine needs)``; ``weights_TK`` None = weight 1."""

    @abstractmethod
    def combine(self, out: torch.Tensor, rows: ExpertRows, plan: object) -> torch.Tensor:
        """``(T, D)``: the experts' output rows ``out`` (S, D) weighted and summed per token;
        the torch experts' ``out`` is summed already, ``(T, D)``, and passes on."""


class LocalDispatcher(TokenDispatcher):
    """Every expert of the layer on this rank (no communication)."""

    def __init__(self, num_experts: int):
        self.num_experts = num_experts

    def dispatch(self, x_TD, weights_TK, ids_TK, backend) -> tuple[ExpertRows, None]:
        if backend == "triton":
            from pipeline.ops import triton_dispatch  # imports Triton: see pipeline.ops

            row_TK, tok_S, offs_E = triton_dispatch.group_by_expert(ids_TK, self.num_experts)
            rows = ExpertRows(
                backend, x_TD.contiguous(), tok_S, offs_E, row_TK=row_TK, weights_TK=weights_TK
            )
            return rows, None
        group = (
            reference.group_by_expert if backend == "reference" else torch_dispatch.group_by_expert
        )
        slot_S, offs_E = group(ids_TK, self.num_experts)
        weight_S = None if weights_TK is None else weights_TK.reshape(-1)[slot_S]
        return ExpertRows(backend, x_TD, slot_S // ids_TK.shape[1], offs_E, weight_S), None

    def combine(self, out, rows, plan=None) -> torch.Tensor:
        if rows.backend == "triton":
            from pipeline.ops import triton_dispatch

            return triton_dispatch.combine(out, rows.row_TK, rows.weights_TK)
        if rows.backend == "reference":
            return reference.combine(out, rows.tok_S, rows.weight_S, rows.num_tokens)
        return out  # the torch experts summed their rows per token (T, D) themselves


@dataclass(frozen=True)
class ExpertShard:
    """This rank's block of experts: rank ``rank`` of an expert-parallel group of ``size``
    ranks over ``group`` holds experts ``local_slice``. ``mesh`` is the ``(data_parallel,
    expert_parallel)`` device mesh it belongs to (checkpoints view the blocks through it)."""

    num_experts: int
    rank: int
    size: int
    group: dist.ProcessGroup
    mesh: DeviceMesh

    @property
    def local_experts(self) -> int:
        return self.num_experts // self.size

    @property
    def local_slice(self) -> slice:
        return slice(self.rank * self.local_experts, (self.rank + 1) * self.local_experts)


@dataclass
class _AllToAllPlan:
    """What :meth:`AllToAllDispatcher.combine` needs from the dispatch."""

    slot_S: torch.Tensor
    tok_S: torch.Tensor
    send: list[int]
    recv: list[int]
    weights_TK: torch.Tensor
    num_tokens: int
    local_rows: ExpertRows


class AllToAllDispatcher(TokenDispatcher):
    """Experts spread over an expert-parallel group (see the module docstring)."""

    def __init__(self, shard: ExpertShard):
        self.shard = shard
        self.local = LocalDispatcher(shard.local_experts)

    def dispatch(self, x_TD, weights_TK, ids_TK, backend) -> tuple[ExpertRows, _AllToAllPlan]:
        slot_S, send, recv, local_ids_M = self._exchange_counts(ids_TK)
        tok_S = slot_S // ids_TK.shape[1]
        group = self.shard.group
        xr_MD = all_to_all_single_autograd(x_TD.index_select(0, tok_S), recv, send, group)
        rows, _ = self.local.dispatch(xr_MD, None, local_ids_M.unsqueeze(1), backend)
        return rows, _AllToAllPlan(slot_S, tok_S, send, recv, weights_TK, x_TD.shape[0], rows)

    def combine(self, out, rows, plan: _AllToAllPlan) -> torch.Tensor:
        yr_MD = self.local.combine(out, rows).to(rows.x_TD.dtype)  # send in the input dtype
        group = self.shard.group
        ys_SD = all_to_all_single_autograd(yr_MD.contiguous(), plan.send, plan.recv, group)
        w_S1 = plan.weights_TK.reshape(-1)[plan.slot_S].unsqueeze(1).to(ys_SD.dtype)
        y_TD = ys_SD.new_zeros(plan.num_tokens, ys_SD.shape[1])
        return y_TD.index_add(0, plan.tok_S, ys_SD * w_S1)

    @torch.no_grad()
    def _exchange_counts(self, ids_TK: torch.Tensor):
        """Sort order of the assignments (by global expert, so by destination rank), rows to
        send per rank, rows to receive per rank, and the local expert of every received row."""
        shard = self.shard
        slot_S, counts_E = torch_dispatch.sort_by_expert(ids_TK, shard.num_experts)
        recv_Pe = torch.empty_like(counts_E)
        dist.all_to_all_single(recv_Pe, counts_E.contiguous(), group=shard.group)  # e each
        recv_Pe = recv_Pe.view(shard.size, shard.local_experts)
        local_ids_M = torch.arange(shard.local_experts, device=ids_TK.device).repeat(shard.size)
        local_ids_M = local_ids_M.repeat_interleave(recv_Pe.reshape(-1))
        send_P = counts_E.view(shard.size, shard.local_experts).sum(1)
        return slot_S, send_P.tolist(), recv_Pe.sum(1).tolist(), local_ids_M
