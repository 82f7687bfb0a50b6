"""Routers: hidden states → ``(weights[T, K], expert_ids[T, K])`` plus what the losses need.

Every router computes its logits in float32, even under bf16 autocast: routing decisions flip on
small logit differences, and the z-loss squares the logsumexp.

- ``softmax_topk``: top-k of the softmax, optionally renormalised over the k picks. k=1 without
  renormalisation is the Switch Transformer router.
- ``sigmoid_bias``: DeepSeek-V3's auxiliary-loss-free balancing (Wang et al. 2024,
  arXiv:2408.15664). Scores are ``sigmoid(logits)``; a per-expert bias (a buffer, not trained by
  gradients) is added to the scores to SELECT the top-k experts only; the weights come from the
  unbiased scores of the selected experts, normalised over the k.
  :meth:`SigmoidBiasRouter.update_bias` nudges the bias by ``rate · sign(mean load − load_e)``
  from the loads of one optimizer step, which the MoE layer counts (once per micro-batch, outside
  any recomputed block: :mod:`pipeline.model.moe`).
- ``expert_choice``: each expert picks its top-C tokens (Zhou et al., 2022). NOT CAUSAL: whether
  a token is picked depends on every other token of the micro-batch, future ones included, so it
  is a training-time router only. In eval mode it falls back to token-choice top-k softmax (with
  a warning logged once), so a trained model can still be evaluated and generate text; eval
  routing then differs from training routing, which the evaluation should keep in mind.

Group-limited routing (DeepSeek-V2 device-limited routing, arXiv:2405.04434; DeepSeek-V3,
arXiv:2412.19437, section 2.1.2), for ``softmax_topk`` and ``sigmoid_bias``: the E experts form
``n_groups`` groups of consecutive ids, each token ranks the groups by the sum of the two highest
selection scores inside them and keeps the best ``topk_groups``, then takes its top-k among the
experts of those groups. The selection score is the one the router ranks experts by: the
softmax probability, or the biased sigmoid score (as transformers' ``DeepseekV3TopkRouter`` and
torchtitan's ``torchtitan/models/common/moe.py`` do; Megatron-Core's ``group_limited_topk`` in
``megatron/core/transformer/moe/moe_utils.py`` sums the top ``k / topk_groups`` instead of the
top 2). Selection only: the weights, ``probs`` and every gradient formula are the ungrouped
router's, restricted to the experts picked. With ``n_groups`` set to the expert-parallel size
a token's experts live on at most ``topk_groups`` ranks; the dispatch does not rely on it.

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


def keep_top_groups(key_TE: torch.Tensor, n_groups: int, topk_groups: int) -> torch.Tensor:
    """``key_TE`` with the experts outside each token's ``topk_groups`` best groups at -inf; a
    group's rank is the sum of its two highest keys (see the module docstring)."""
    t, e = key_TE.shape
    key_TGS = key_TE.view(t, n_groups, e // n_groups)
    group_score_TG = key_TGS.topk(2, dim=-1).values.sum(dim=-1)
    kept_TG = torch.zeros_like(group_score_TG, dtype=torch.bool)
    kept_TG.scatter_(1, group_score_TG.topk(topk_groups, dim=-1).indices, True)
    return key_TGS.masked_fill(~kept_TG[..., None], float("-inf")).view(t, e)


def _fused_route(logits_TE: torch.Tensor, router: Router, score: str,
                 bias_E: torch.Tensor | None = None) -> Routing:  # fmt: skip
    """The fused Triton router's :class:`Routing`. Imported on first call, not at module
    import: Triton reads ``TRITON_INTERPRET`` when its kernels are defined (:mod:`pipeline.ops`)."""
    from pipeline.ops.triton_routing import fused_route

    weights_TK, ids_TK, probs_TE, counts_E, prob_sum_E, z_sum = fused_route(
        logits_TE, router.top_k, score, router.renormalize, bias_E, router.n_groups,
        router.topk_groups,
    )  # fmt: skip
    return Routing(weights_TK, ids_TK, logits_TE, probs_TE, counts_E.float(), prob_sum_E, z_sum)


class Router(nn.Module):
    """A linear gate ``logits = x Wᵀ`` (``weight (E, D)``, HF Mixtral's ``gate.weight``)."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.renormalize = cfg.renormalize
        # Groups of one (n_groups 1) or all kept: plain top-k, without the group ranking's work.
        self.n_groups, self.topk_groups = (
            (cfg.n_groups, cfg.topk_groups) if cfg.group_limited else (1, 1)
        )
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, d_model))

    def _select(self, key_TE: torch.Tensor) -> torch.Tensor:
        """(T, K) ids of the top-k of ``key_TE`` within each token's groups."""
        if self.n_groups > 1:
            key_TE = keep_top_groups(key_TE, self.n_groups, self.topk_groups)
        return key_TE.topk(self.top_k, dim=-1).indices

    def forward(self, x_TD: torch.Tensor, fused: bool = False) -> Routing:
        """Route ``x_TD``; ``fused`` takes the Triton kernel where the router has one."""
        with torch.autocast(x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight.float())
            return self.route(logits_TE, fused)

    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        raise NotImplementedError

    def update_bias(self, load_E: torch.Tensor) -> None:
        """Called after each optimizer step with the step's assignments per expert (summed over
        its micro-batches and ranks); only the aux-loss-free router has state to update."""


class SoftmaxTopKRouter(Router):
    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        if fused:
            return _fused_route(logits_TE, self, "softmax")
        if self.n_groups > 1:
            probs_TE = logits_TE.softmax(dim=-1)
            ids_TK = self._select(probs_TE.detach())
            return _renormalized(probs_TE.gather(1, ids_TK), ids_TK, logits_TE, probs_TE, self)
        return _softmax_topk(logits_TE, self.top_k, self.renormalize)


def _softmax_topk(logits_TE: torch.Tensor, k: int, renormalize: bool) -> Routing:
    probs_TE = logits_TE.softmax(dim=-1)
    weights_TK, ids_TK = probs_TE.topk(k, dim=-1)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return _routing(weights_TK, ids_TK, logits_TE, probs_TE)


def _renormalized(weights_TK, ids_TK, logits_TE, probs_TE, router: Router) -> Routing:
    if router.renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return _routing(weights_TK, ids_TK, logits_TE, probs_TE)


class SigmoidBiasRouter(Router):
    """DeepSeek-V3 aux-loss-free routing; see the module docstring. The bias buffer is
    checkpointed; every rank gets the same step loads (summed over the ranks by the MoE layer),
    so every rank applies the same update and the bias stays identical across ranks."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__(d_model, cfg)
        self.bias_update_rate = cfg.bias_update_rate
        self.register_buffer("expert_bias", torch.zeros(cfg.num_experts))

    def route(self, logits_TE: torch.Tensor, fused: bool) -> Routing:
        if fused:
            return _fused_route(logits_TE, self, "sigmoid", self.expert_bias.float())
        scores_TE = logits_TE.sigmoid()
        ids_TK = self._select(scores_TE.detach() + self.expert_bias)
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        return _renormalized(scores_TE.gather(1, ids_TK), ids_TK, logits_TE, probs_TE, self)

    @torch.no_grad()
    def update_bias(self, load_E: torch.Tensor) -> None:
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
