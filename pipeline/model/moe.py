"""The mixture-of-experts feed-forward layer: router → capacity → experts (a backend) → combine.

Routing (:mod:`pipeline.model.router`) decides ``(weights[T, K], expert_ids[T, K])``; capacity
dropping marks overflowing assignments as empty slots (id -1); a backend from
:mod:`pipeline.ops` runs dispatch, the SwiGLU experts and the weighted combine without knowing
how the routing was decided. Shared experts (always on) are added to every token's output.

Capacity (``capacity_factor`` not null) applies to token-choice routers in training only: in
eval mode the layer is dropless, so evaluation and generation stay causal and independent of
what else is in the batch. A dropped assignment contributes nothing; the token still passes
through the residual connection (and the shared experts).

Loss granularity (why the losses are means, and what is exact under micro-batching): see
:mod:`pipeline.model.losses`.

Distributed runs. ``stats_group`` (set by the trainer to the whole data-parallel world) sums the
expert counts over its ranks before the Switch loss and the logged statistics use them, so both
describe the global micro-batch: the same numbers whatever the parallel layout (the mean of the
ranks' losses ``E·Σ f_global·P_rank`` is exactly the single-process loss, as every rank holds
the same number of tokens). ``expert_shard`` (expert parallelism) makes ``w1, w3, w2`` hold
only this rank's experts and sends tokens to them by all-to-all
(:mod:`pipeline.parallel.expert`).

Legend: B batch, L sequence length, T = B·L tokens, K slots, E experts, D model, F expert hidden.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from pipeline.config import MoEConfig
from pipeline.model import losses
from pipeline.model.layers import MLP
from pipeline.model.router import Routing, build_router, expert_capacity
from pipeline.ops import get_backend
from pipeline.parallel.expert import ExpertShard, expert_parallel_experts


@dataclass
class RouterStats:
    """Detached per-layer statistics of one forward, for logging.

    ``load (E,)``: fraction of the router's assignments per expert (before capacity drops).
    ``mean_prob (E,)``: mean router probability per expert.
    ``dropped_fraction``: token choice: fraction of assignments dropped by capacity;
    expert choice: fraction of tokens no expert picked.
    ``entropy``: mean router entropy in nats (ln E = uniform).
    ``counts (E,)``: assignments per expert (before capacity drops).
    ``losses``: the unweighted router losses by name (``load_balance``, ``z_loss``,
    ``seq_balance``).
    """

    load: torch.Tensor
    mean_prob: torch.Tensor
    dropped_fraction: torch.Tensor
    entropy: torch.Tensor
    counts: torch.Tensor
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class MoELayer(nn.Module):
    """Routed SwiGLU experts (stacked weights ``w1, w3 (E, F, D)``, ``w2 (E, D, F)``) plus
    optional shared experts (one dense SwiGLU of ``num_shared_experts · expert_hidden``, which
    equals the sum of that many separate experts)."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.cfg = cfg
        e, f = cfg.num_experts, cfg.expert_hidden
        self.router = build_router(d_model, cfg)
        self.w1 = nn.Parameter(torch.empty(e, f, d_model))
        self.w3 = nn.Parameter(torch.empty(e, f, d_model))
        self.w2 = nn.Parameter(torch.empty(e, d_model, f))
        shared = cfg.num_shared_experts * cfg.expert_hidden
        self.shared = MLP(d_model, shared) if shared else None
        self.backend = get_backend(cfg.backend)
        self.stats_group: dist.ProcessGroup | None = None
        self.expert_shard: ExpertShard | None = None

    def params_per_expert(self) -> int:
        return self.w1[0].numel() + self.w3[0].numel() + self.w2[0].numel()

    def forward(self, x_BLD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        """Returns the output, the weighted sum of this layer's router losses, and its stats."""
        batch, length, d = x_BLD.shape
        x_TD = x_BLD.reshape(-1, d)
        routing = self.router(x_TD)
        weights_TK, ids_TK, dropped = self._apply_capacity(routing)
        y_TD = self._experts(x_TD, weights_TK, ids_TK)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        stats = self._stats(routing, dropped)
        named = self._losses(routing, batch, stats.counts)
        stats.losses = {name: value.detach() for name, value in named.items()}
        aux = (
            self.cfg.aux_loss_weight * named["load_balance"]
            + self.cfg.z_loss_weight * named["z_loss"]
            + self.cfg.seq_aux_loss_weight * named["seq_balance"]
        )
        return y_TD.view(batch, length, d), aux, stats

    def _apply_capacity(self, r: Routing) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drop assignments over capacity; returns weights, ids (-1 = dropped), dropped fraction."""
        ids_TK = r.expert_ids_TK
        if self.cfg.router == "expert_choice" and self.training:
            unpicked = (ids_TK < 0).all(dim=1).float().mean()
            return r.weights_TK, ids_TK, unpicked
        if self.cfg.capacity_factor is None or not self.training:
            return r.weights_TK, ids_TK, ids_TK.new_zeros((), dtype=torch.float32)
        capacity = expert_capacity(
            ids_TK.shape[0], ids_TK.shape[1], self.cfg.num_experts, self.cfg.capacity_factor
        )
        scores_TK = r.probs_TE.detach().gather(1, ids_TK)
        keep = losses.capacity_keep_mask(scores_TK, ids_TK, capacity, self.cfg.drop_policy)
        weights_TK = torch.where(keep, r.weights_TK, 0.0)
        return weights_TK, torch.where(keep, ids_TK, -1), 1.0 - keep.float().mean()

    def _experts(self, x_TD: torch.Tensor, weights_TK: torch.Tensor, ids_TK: torch.Tensor):
        """Run the backend in the autocast dtype (if any) with autocast off: backends cast
        explicitly, and custom grouped GEMMs are not autocast-aware."""
        device = x_TD.device.type
        dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x_TD.dtype
        )
        with torch.autocast(device, enabled=False):
            args = (x_TD.to(dtype), weights_TK, ids_TK, self.w1, self.w3, self.w2)
            if self.expert_shard is None:
                return self.backend(*args)
            return expert_parallel_experts(self.backend, *args, self.expert_shard)

    def _losses(self, r: Routing, batch: int, counts_E: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "load_balance": losses.load_balance_loss(r.expert_ids_TK, r.probs_TE, counts_E),
            "z_loss": losses.z_loss(r.logits_TE),
            "seq_balance": losses.seq_balance_loss(r.expert_ids_TK, r.probs_TE, batch),
        }

    @torch.no_grad()
    def _stats(self, r: Routing, dropped: torch.Tensor) -> RouterStats:
        """Counts summed, the other statistics averaged over ``stats_group`` (one collective)."""
        e = self.cfg.num_experts
        counts_E = losses.expert_counts(r.expert_ids_TK, e)
        means = torch.cat(
            [r.probs_TE.mean(dim=0), losses.router_entropy(r.probs_TE)[None], dropped[None]]
        ).float()
        if self.stats_group is not None:
            packed = torch.cat([counts_E, means / dist.get_world_size(self.stats_group)])
            dist.all_reduce(packed, group=self.stats_group)
            counts_E, means = packed[:e], packed[e:]
        return RouterStats(
            load=counts_E / counts_E.sum().clamp(min=1),
            mean_prob=means[:e],
            dropped_fraction=means[e + 1],
            entropy=means[e],
            counts=counts_E,
        )
