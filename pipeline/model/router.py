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

Fused path. ``softmax_topk`` and ``sigmoid_bias`` route through the fused Triton kernel
(:mod:`pipeline.ops.triton_router`: scores, bias, top-k and renormalisation in one launch, its
own backward) when the MoE backend is ``triton``, or ``auto`` and the logits are on a CUDA
device with triton installed; otherwise through the PyTorch code below, which stays the default
and the kernel's test oracle. Both give the same :class:`Routing`.

Legend: T tokens, K slots per token, E experts, D model dim.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import MoEConfig
from pipeline.model.losses import expert_counts
from pipeline.ops import triton_available

log = logging.getLogger(__name__)


@dataclass
class Routing:
    """One router call's decisions and what the losses and statistics need.

    ``weights_TK`` and ``probs_TE`` carry gradients to the router; ``expert_ids_TK`` holds -1 in
    empty slots (expert-choice routing gives each token between 0 and E experts, so its K is E).
    ``probs_TE`` is the per-token distribution over experts the balance losses use: the softmax,
    or for sigmoid scores the scores normalised to sum to 1 (DeepSeek-V3's ``s'``).
    """

    weights_TK: torch.Tensor
    expert_ids_TK: torch.Tensor
    logits_TE: torch.Tensor
    probs_TE: torch.Tensor


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


@functools.cache
def _announce_fused(router: str, backend: str) -> None:
    when = "always" if backend == "triton" else "on CUDA tensors (PyTorch otherwise)"
    log.info("%s router: fused Triton routing kernel %s (backend %r)", router, when, backend)


def _fused_route(logits_TE: torch.Tensor, k: int, score: str, renormalize: bool,
                 bias_E: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:  # fmt: skip
    """``(weights_TK, ids_TK, probs_TE, counts_E, prob_sum_E, z_sum)`` from the fused kernel.

    Imported on first call, not at module import: Triton reads ``TRITON_INTERPRET`` when its
    kernels are defined (see :mod:`pipeline.ops`)."""
    from pipeline.ops.triton_router import fused_route

    return fused_route(logits_TE, k, score, renormalize, bias_E)


def expert_capacity(num_tokens: int, top_k: int, num_experts: int, factor: float) -> int:
    """Slots per expert: ``ceil(factor · tokens · k / experts)``."""
    return math.ceil(factor * num_tokens * top_k / num_experts)


class Router(nn.Module):
    """A linear gate ``logits = x Wᵀ`` (``weight (E, D)``, HF Mixtral's ``gate.weight``)."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__()
        self.num_experts = cfg.num_experts
        self.top_k = cfg.top_k
        self.renormalize = cfg.renormalize
        self.weight = nn.Parameter(torch.empty(cfg.num_experts, d_model))
        self.backend = cfg.backend

    def forward(self, x_TD: torch.Tensor) -> Routing:
        with torch.autocast(x_TD.device.type, enabled=False):
            logits_TE = F.linear(x_TD.float(), self.weight.float())
            return self.route(logits_TE)

    def route(self, logits_TE: torch.Tensor) -> Routing:
        raise NotImplementedError

    def fused(self, logits_TE: torch.Tensor) -> bool:
        """Whether this call takes the fused Triton kernel (see the module docstring)."""
        if self.backend == "triton":
            return True
        return self.backend == "auto" and logits_TE.is_cuda and triton_available()

    def _announce(self) -> None:
        """Say once, at construction, which routing path the backend selects."""
        if self.backend in ("triton", "auto") and triton_available():
            _announce_fused(type(self).__name__, self.backend)

    def update_bias(self) -> None:
        """Called after each optimizer step; only the aux-loss-free router has state to update."""


class SoftmaxTopKRouter(Router):
    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__(d_model, cfg)
        self._announce()

    def route(self, logits_TE: torch.Tensor) -> Routing:
        if self.fused(logits_TE):
            weights_TK, ids_TK, probs_TE, *_ = _fused_route(
                logits_TE, self.top_k, "softmax", self.renormalize
            )
            return Routing(weights_TK, ids_TK, logits_TE, probs_TE)
        return _softmax_topk(logits_TE, self.top_k, self.renormalize)


def _softmax_topk(logits_TE: torch.Tensor, k: int, renormalize: bool) -> Routing:
    probs_TE = logits_TE.softmax(dim=-1)
    weights_TK, ids_TK = probs_TE.topk(k, dim=-1)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return Routing(weights_TK, ids_TK, logits_TE, probs_TE)


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
        self._announce()

    def route(self, logits_TE: torch.Tensor) -> Routing:
        if self.fused(logits_TE):
            weights_TK, ids_TK, probs_TE, counts_E, *_ = _fused_route(
                logits_TE, self.top_k, "sigmoid", self.renormalize, self.expert_bias.float()
            )
            if self.training:
                self._add_load(counts_E.float())
            return Routing(weights_TK, ids_TK, logits_TE, probs_TE)
        scores_TE = logits_TE.sigmoid()
        ids_TK = (scores_TE.detach() + self.expert_bias).topk(self.top_k, dim=-1).indices
        weights_TK = scores_TE.gather(1, ids_TK)
        if self.renormalize:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        if self.training:
            self._add_load(expert_counts(ids_TK, self.num_experts))
        probs_TE = scores_TE / scores_TE.sum(dim=-1, keepdim=True)
        return Routing(weights_TK, ids_TK, logits_TE, probs_TE)

    @torch.no_grad()
    def _add_load(self, load_E: torch.Tensor) -> None:
        self._load_E = load_E if self._load_E is None else self._load_E + load_E

    @torch.no_grad()
    def update_bias(self) -> None:
        if self._load_E is None:
            return
        load_E, self._load_E = self._load_E, None
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load_E)
        self.expert_bias += self.bias_update_rate * torch.sign(load_E.mean() - load_E)


class ExpertChoiceRouter(Router):
    """Each expert takes its top-C tokens by softmax probability; training only (not causal)."""

    def __init__(self, d_model: int, cfg: MoEConfig):
        super().__init__(d_model, cfg)
        self.capacity_factor = 1.0 if cfg.capacity_factor is None else cfg.capacity_factor

    def capacity(self, num_tokens: int) -> int:
        c = expert_capacity(num_tokens, self.top_k, self.num_experts, self.capacity_factor)
        return min(c, num_tokens)

    def route(self, logits_TE: torch.Tensor) -> Routing:
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
        return Routing(weights_TE, ids_TE, logits_TE, probs_TE)


_ROUTERS: dict[str, type[Router]] = {
    "softmax_topk": SoftmaxTopKRouter,
    "sigmoid_bias": SigmoidBiasRouter,
    "expert_choice": ExpertChoiceRouter,
}


def build_router(d_model: int, cfg: MoEConfig) -> Router:
    return _ROUTERS[cfg.router](d_model, cfg)
