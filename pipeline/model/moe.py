"""The mixture-of-experts feed-forward layer, in the order it runs:

    router → capacity → dispatch → experts → combine (+ shared experts)

- router (:mod:`pipeline.model.router`): ``(weights[T, K], expert_ids[T, K])`` plus the sums the
  losses and statistics need;
- capacity (:mod:`pipeline.model.capacity`): in training, assignments over an expert's capacity
  become empty slots (id -1);
- dispatch and combine (:mod:`pipeline.model.dispatch`): token rows grouped by expert (on this
  rank, or across an expert-parallel group by all-to-all) and the outputs summed back per token;
- experts (:mod:`pipeline.model.experts`): the SwiGLU of each grouped row;
- shared experts (always on) are added to every token's output.

Which implementation runs each role is the runtime ``backend`` (:mod:`pipeline.model.backends`),
resolved per call from the activations' device; the layer never branches on it.

Loss granularity (why the losses are means, the three balance scopes, and what is exact under
micro-batching): see :mod:`pipeline.model.losses`.

Step counts. Two per-step quantities need the assignments of every micro-batch of an optimizer
step: the ``global`` balance loss (the whole step's counts when the trainer's routing pre-pass
has set ``known_step_counts_E``, else the counts of the step so far) and the aux-loss-free bias
update (the counts of the whole step). The layer keeps them in two non-persistent buffers:
``micro_counts_E``, this micro-batch's counts, overwritten by each training forward, and
``step_counts_E``, the counts of the step's earlier micro-batches, which
:meth:`MoELayer.begin_micro_batch` advances when the NEXT micro-batch starts (called by the
transformer's own forward, never by a block) and :meth:`MoELayer.end_step` spends and clears
after the optimizer step. Activation checkpointing recomputes a block's forward during its
backward: the recomputation writes the same counts into ``micro_counts_E`` again and reads the
same ``step_counts_E``, so the counts advance once per micro-batch and the recomputed loss is the
original one (torchtitan's ``tokens_per_expert`` is added inside the forward and counted twice
under checkpointing: the TODO in ``torchtitan/models/common/moe.py``; this layer's sigmoid router
had the same double count before the counts moved here). Buffers rather than attributes: they
follow the module to its device and ``torch.compile`` treats their in-place updates as state;
every rank holds the same values (the counts are summed over ``stats_group`` first), so DDP's
buffer broadcast changes nothing.

Distributed runs. ``stats_group`` (set by :mod:`pipeline.parallel.setup` to the whole
data-parallel world) sums the expert counts over its ranks before the Switch loss and the logged
statistics use them, so both describe the global micro-batch: the same numbers whatever the
parallel layout (the mean of the ranks' losses ``E·Σ f_global·P_rank`` is exactly the
single-process loss, as every rank holds the same number of tokens). Expert parallelism swaps
``dispatcher`` for an :class:`~pipeline.model.dispatch.AllToAllDispatcher` and keeps only this
rank's experts in ``experts``.

Shapes (``docs/ARCHITECTURE.md``): B batch, L sequence length, T = B·L tokens, K slots,
E experts, D model dim, F expert hidden.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn as nn

from pipeline.config import MoEConfig
from pipeline.model import losses
from pipeline.model.backends import check_backend, resolve_backend
from pipeline.model.capacity import capacity_keep_mask, expert_capacity
from pipeline.model.dispatch import LocalDispatcher, TokenDispatcher
from pipeline.model.experts import GroupedExperts, swiglu_experts
from pipeline.model.layers import MLP
from pipeline.model.router import Routing, build_router
from pipeline.model.routing_stats import RouterStats, router_entropy

log = logging.getLogger(__name__)


class MoELayer(nn.Module):
    """Routed SwiGLU experts plus optional shared experts (one dense SwiGLU of
    ``num_shared_experts · expert_hidden``, which equals the sum of that many separate
    experts). ``backend`` is the requested runtime backend (``auto`` resolves per call)."""

    def __init__(self, d_model: int, cfg: MoEConfig, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.backend = check_backend(backend)
        # Registered before the router: MoETransformer initialises parameters in registration
        # order from one RNG stream, and this order is the one every checkpoint was drawn in.
        self.experts = GroupedExperts(cfg.num_experts, d_model, cfg.expert_hidden)
        self.router = build_router(d_model, cfg)
        shared = cfg.num_shared_experts * cfg.expert_hidden
        self.shared = MLP(d_model, shared) if shared else None
        self.dispatcher: TokenDispatcher = LocalDispatcher(cfg.num_experts)
        self.stats_group: dist.ProcessGroup | None = None
        self.register_buffer("micro_counts_E", torch.zeros(cfg.num_experts), persistent=False)
        self.register_buffer("step_counts_E", torch.zeros(cfg.num_experts), persistent=False)
        # The whole step's counts when known before its first backward (global balance under
        # accumulation: the trainer's routing pre-pass, pipeline/train/step_routing.py).
        self.known_step_counts_E: torch.Tensor | None = None
        self.register_load_state_dict_pre_hook(_experts_into_their_module)

    def forward(self, x_BLD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, RouterStats]:
        """Returns the output, the weighted sum of this layer's router losses, and its stats."""
        batch, length, d = x_BLD.shape
        x_TD = x_BLD.reshape(-1, d)
        device = x_TD.device.type
        # The experts' dtype: autocast's (if on), else the activations'.
        dtype = (
            torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x_TD.dtype
        )
        backend = resolve_backend(self.backend, x_TD.device, dtype)
        routing = self.router(x_TD, fused=backend == "triton")
        weights_TK, ids_TK, dropped = self._apply_capacity(routing)
        y_TD = self._routed(x_TD, weights_TK, ids_TK, backend, dtype)
        if self.shared is not None:
            y_TD = y_TD + self.shared(x_TD)
        stats = self._stats(routing, dropped)
        if self.training:
            self.micro_counts_E.copy_(stats.counts)
        named = self._losses(routing, batch, stats.counts)
        stats.losses = {name: value.detach() for name, value in named.items()}
        weights = (self.cfg.aux_loss_weight, self.cfg.z_loss_weight)
        aux = sum(w * value for w, value in zip(weights, named.values(), strict=True))
        return y_TD.view(batch, length, d), aux, stats

    @torch.no_grad()
    def begin_micro_batch(self) -> None:
        """A new training micro-batch starts: the previous one's counts join the step's."""
        self.step_counts_E += self.micro_counts_E
        self.micro_counts_E.zero_()

    @torch.no_grad()
    def end_step(self) -> None:
        """After the optimizer step: the step's counts move the router's bias, then clear."""
        self.router.update_bias(self.step_counts_E + self.micro_counts_E)
        self.step_counts_E.zero_()
        self.micro_counts_E.zero_()
        self.known_step_counts_E = None

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
        keep = capacity_keep_mask(scores_TK, ids_TK, r.counts_E, capacity, self.cfg.drop_policy)
        weights_TK = torch.where(keep, r.weights_TK, 0.0)
        return weights_TK, torch.where(keep, ids_TK, -1), 1.0 - keep.float().mean()

    def _routed(self, x_TD, weights_TK, ids_TK, backend: str, dtype: torch.dtype) -> torch.Tensor:
        """dispatch → experts → combine in ``dtype`` with autocast off: the ops cast
        explicitly, and custom grouped GEMMs are not autocast-aware."""
        device = x_TD.device.type
        with torch.autocast(device, enabled=False):
            e = self.experts
            y_TD = routed_experts(
                self.dispatcher, x_TD.to(dtype), weights_TK, ids_TK, e.w13, e.w2, backend
            )
            return y_TD.to(dtype)

    def _losses(self, r: Routing, batch: int, counts_E: torch.Tensor) -> dict[str, torch.Tensor]:
        """The balance loss of the configured scope, then the z-loss, from the router's own sums
        (the fused kernel's on the triton path); ``counts_E`` are this micro-batch's, summed
        over ``stats_group``. ``global`` takes the step's counts when known, else those of the
        step so far (exact at its last micro-batch); eval forwards belong to no step."""
        num_tokens = r.logits_TE.shape[0]
        scope = self.cfg.balance
        if scope == "sequence":
            name, balance = (
                "seq_balance",
                losses.seq_balance_loss(r.expert_ids_TK, r.probs_TE, batch),
            )
        else:
            if scope == "global" and self.training:
                known = self.known_step_counts_E
                counts_E = self.step_counts_E + counts_E if known is None else known
            name = f"{'global' if scope == 'global' else 'load'}_balance"
            balance = losses.load_balance_loss(counts_E, r.prob_sum_E, num_tokens)
        return {name: balance, "z_loss": losses.z_loss(r.z_sum, num_tokens)}

    @torch.no_grad()
    def _stats(self, r: Routing, dropped: torch.Tensor) -> RouterStats:
        """Counts summed, the other statistics averaged over ``stats_group`` (one collective)."""
        e = self.cfg.num_experts
        counts_E = r.counts_E
        mean_prob_E = r.prob_sum_E / r.logits_TE.shape[0]
        means = torch.cat([mean_prob_E, router_entropy(r.probs_TE)[None], dropped[None]]).float()
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
            expert_ids=r.expert_ids_TK,
        )


def _experts_into_their_module(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # fmt: skip
    """Load-time conversion of the oldest layout, whose MoE layer held ``w1, w3, w2`` itself:
    they move under ``experts.`` (where :class:`GroupedExperts` stacks ``w1`` and ``w3``)."""
    for name in ("w1", "w3", "w2"):
        if prefix + name in state_dict:
            state_dict[f"{prefix}experts.{name}"] = state_dict.pop(prefix + name)
            log.info("%s%s: older layout, loaded as %sexperts.%s", prefix, name, prefix, name)


def routed_experts(
    dispatcher: TokenDispatcher,
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    ids_TK: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
    backend: str,
) -> torch.Tensor:
    """dispatch → experts → combine: ``y[t] = Σ_k weights[t, k] · SwiGLU_{ids[t, k]}(x[t])``,
    where an id of -1 (an empty slot) contributes nothing. The same function on every backend
    (``tests/model/test_backends.py`` holds them to the reference, forward and every gradient)."""
    rows, plan = dispatcher.dispatch(x_TD, weights_TK, ids_TK, backend)
    return dispatcher.combine(swiglu_experts(rows, w13_E2FD, w2_EDF), rows, plan)
