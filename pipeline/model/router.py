"""Routers: hidden states → ``(weights[T, K], expert_ids[T, K])`` plus what the losses need.

Every router computes its logits in float32, even under bf16 autocast: routing decisions flip on
small logit differences, and the z-loss squares the logsumexp.

- ``softmax_topk``: top-k of the softmax, optionally renormalised over the k picks. k=1 without
  renormalisation is the Switch Transformer router.
- ``sigmoid_bias``: DeepSeek-V3's auxiliary-loss-free balancing. Scores are ``sigmoid(logits)``;
  a per-expert bias (a buffer, not trained by gradients) is added to the scores to SELECT the
  top-k experts only; the weights come from the unbiased scores of the selected experts,
  normalised over the k. :meth:`SigmoidBiasRouter.update_bias` nudges the bias by
  ``rate · sign(mean load − load_e)`` from the loads counted since the previous update.
- ``expert_choice``: each expert picks its top-C tokens (Zhou et al., 2022). NOT CAUSAL: whether
  a token is picked depends on every other token of the micro-batch, future ones included, so it
  is a training-time router only. In eval mode it falls back to token-choice top-k softmax (with
  a warning logged once), so a trained model can still be evaluated and generate text; eval
  routing then differs from training routing, which the evaluation should keep in mind.

Fused path. ``softmax_topk`` and ``sigmoid_bias`` route through the fused Triton op
(:mod:`pipeline.ops.triton_routing`: scores, bias, top-k, renormalisation and the loss sums in
one launch, its own backward) when the layer's resolved backend is ``triton``
(:func:`pipeline.model.backends.resolve_backend`); otherwise through the PyTorch code below,
which is the kernel's test oracle. Both give the same :class:`Routing`, sums included, so the
losses and statistics never recompute what the router already counted.

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots per token, E experts, D model dim,
C tokens an expert-choice expert takes.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import MoEConfig
from pipeline.model.capacity import expert_capacity

log = logging.getLogger(__name__)


@dataclass
class Routing:
    """One router call's decisions and the sums the losses and statistics need.

    ``weights_TK`` and ``probs_TE`` carry gradients to the router; ``expert_ids_TK`` holds -1 in
    empty slots (expert-choice routing gives each token between 0 and E experts, so its K is E).
    ``probs_TE`` is the per-token distribution over experts the balance losses use: the softmax,
    or for sigmoid scores the scores normalised to sum to 1 (DeepSeek-V3's ``s'``).
    ``counts_E`` (float, no gradient): assignments per expert. ``prob_sum_E``: ``Σ_t probs``.
    ``z_sum`` (0-dim): ``Σ_t logsumexp(logits)²``.
    """

    weights_TK: torch.Tensor
    expert_ids_TK: torch.Tensor
    logits_TE: torch.Tensor
    probs_TE: torch.Tensor
    counts_E: torch.Tensor
    prob_sum_E: torch.Tensor
    z_sum: torch.Tensor


def expert_counts(ids_TK: torch.Tensor, num_experts: int) -> torch.Tensor:
    """(E,) float number of assignments per expert; empty slots (-1) are not counted."""
    return torch.bincount(ids_TK.reshape(-1) + 1, minlength=num_experts + 1)[1:].float()


def _routing(weights_TK, ids_TK, logits_TE, probs_TE) -> Routing:
    """A :class:`Routing` with its sums computed in PyTorch (the fused kernel computes its own)."""
    return Routing(
        weights_TK,
        ids_TK,
        logits_TE,
        probs_TE,
        expert_counts(ids_TK, probs_TE.shape[1]),
        probs_TE.sum(dim=0),
        logits_TE.logsumexp(dim=-1).square().sum(),
    )


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _fused_route(logits_TE: torch.Tensor, k: int, score: str, renormalize: bool,
                 bias_E: torch.Tensor | None = None) -> Routing:  # fmt: skip
    """The fused Triton router's :class:`Routing`. Imported on first call, not at module
    import: Triton reads ``TRITON_INTERPRET`` when its kernels are defined (:mod:`pipeline.ops`)."""
    from pipeline.ops.triton_routing import fused_route

    weights_TK, ids_TK, probs_TE, counts_E, prob_sum_E, z_sum = fused_route(
        logits_TE, k, score, renormalize, bias_E
    )
    return Routing(weights_TK, ids_TK, logits_TE, probs_TE, counts_E.float(), prob_sum_E, z_sum)


class Router(nn.Module):
    """A linear gate ``logits = x Wᵀ`` (``weight (E, D)``, HF Mixtral's ``gate.weight``)."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.renormalize = cfg.renormalize
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, d_model))

    def forward(self, x_TD: torch.Tensor, fused: bool = False) -> Routing:
        """Route ``x_TD``; ``fused`` takes the Triton kernel where the router has one."""
        with torch.autocast(x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight.float())
            return self.route(logits_TE, fused)

    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        raise NotImplementedError

    def update_bias(self) -> None:
        """Called after each optimizer step; only the aux-loss-free router has state to update."""


class SoftmaxTopKRouter(Router):
    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        if fused:
            return _fused_route(logits_TE, self.top_k, "softmax", self.renormalize)
        return _softmax_topk(logits_TE, self.top_k, self.renormalize)


def _softmax_topk(logits_TE: torch.Tensor, k: int, renormalize: bool) -> Routing:
    probs_TE = logits_TE.softmax(dim=-1)
    weights_TK, ids_TK = probs_TE.topk(k, dim=-1)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return _routing(weights_TK, ids_TK, logits_TE, probs_TE)


class SigmoidBiasRouter(Router):
    """DeepSeek-V3 aux-loss-free routing; see the module docstring.

    The loads since the last update are kept in a plain attribute, not a registered buffer:
    DDP broadcasts buffers from rank 0 at every forward, which would overwrite each rank's own
    counts. :meth:`update_bias` all-reduces them, so every rank applies the same update and the
    bias buffer (checkpointed) stays identical across ranks.
    """

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__(d_model, cfg)
        self.bias_update_rate = cfg.bias_update_rate
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))
        self._load_E: torch.Tensor | None = None

    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        if fused:
            routing = _fused_route(
                logits_TE, self.top_k, "sigmoid", self.renormalize, self.expert_bias.float()
            )
        else:
            routing = self._route_sigmoid(logits_TE)
        if self.training:
            self._add_load(routing.counts_E)
        return routing

    def _route_sigmoid(self, logits_TE: torch.Tensor) -> Routing:
        scores_TE = logits_TE.sigmoid()
        ids_TK = (scores_TE.detach() + self.expert_bias).topk(self.top_k, dim=-1).indices
        weights_TK = scores_TE.gather(1, ids_TK)
        if self.renormalize:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        return _routing(weights_TK, ids_TK, logits_TE, probs_TE)

    @torch.no_grad()
    def _add_load(self, load_E: torch.Tensor) -> None:
        # A copy: update_bias all-reduces it in place, and load_E is the routing's own count.
        self._load_E = load_E.clone() if self._load_E is None else self._load_E + load_E

    @torch.no_grad()
    def update_bias(self) -> None:
        if self._load_E is None:
            return
        load_E, self._load_E = self._load_E, None
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load_E)
        self.expert_bias += self.bias_update_rate * torch.sign(load_E.mean() - load_E)


class ExpertChoiceRouter(Router):
    """Each expert takes its top-C tokens by softmax probability; training only (not causal).
    There is no fused kernel for it: ``fused`` is ignored."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__(d_model, cfg)
        self.capacity_factor = 1.0 if cfg.capacity_factor is None else cfg.capacity_factor

    def capacity(self, num_tokens: int) -> int:
        c = expert_capacity(num_tokens, self.top_k, self.num_experts, self.capacity_factor)
        return min(c, num_tokens)

    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        if not self.training:
            _warn_once(
                "expert_choice routing is not causal and runs in training only; "
                "eval mode routes by token-choice top-k softmax instead"
            )
            return _softmax_topk(logits_TE, self.top_k, self.renormalize)
        probs_TE = logits_TE.softmax(dim=-1)
        chosen_CE = probs_TE.detach().topk(self.capacity(logits_TE.shape[0]), dim=0).indices
        picked_TE = torch.zeros_like(probs_TE, dtype=torch.bool).scatter_(0, chosen_CE, True)
        experts_E = torch.arange(self.num_experts, device=logits_TE.device)
        ids_TE = torch.where(picked_TE, experts_E, -1)
        weights_TE = probs_TE * picked_TE
        return _routing(weights_TE, ids_TE, logits_TE, probs_TE)


_ROUTERS: dict[str, type[Router]] = {
    "softmax_topk": SoftmaxTopKRouter,
    "sigmoid_bias": SigmoidBiasRouter,
    "expert_choice": ExpertChoiceRouter,
}


def build_router(d_model: int, cfg: MoEConfig) -> Router:
    return _ROUTERS[cfg.router](d_model, cfg)
