"""The fused Triton router as a ``torch.library`` custom op with its own backward.

``fused_route(logits, k, score, renormalize, bias, n_groups, topk_groups)`` returns, in one
kernel launch (group-limited when ``n_groups > 1``),
``(weights_TK, ids_TK, probs_TE, counts_E, prob_sum_E, z_sum)`` (see
:mod:`pipeline.kernels.topk_routing`). The float outputs carry gradients to the logits; the ids and
counts do not. Every output shape follows from the input shapes, so ``torch.compile`` traces
around the op without reading anything back to the host.

What the sums give the router losses (T tokens, :mod:`pipeline.model.losses`): the Switch
loss's mean router probability is ``prob_sum_E / T``, the z-loss is ``z_sum / T``, and
``counts_E`` are the Switch loss's (and the aux-loss-free bias update's, and the logged load's)
assignment counts: one histogram per layer and step.

Shapes (``docs/ARCHITECTURE.md``): T tokens, E experts, K slots per token.
"""

import torch

from pipeline.kernels import topk_routing

_LIB = "moe_triton"


@torch.library.custom_op(f"{_LIB}::fused_route", mutates_args=())
def fused_route(
    logits_TE: torch.Tensor,
    k: int,
    score: str,
    renormalize: bool,
    bias_E: torch.Tensor | None,
    n_groups: int = 1,
    topk_groups: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    out = topk_routing.topk_route(
        logits_TE, k, score=score, renormalize=renormalize, bias_E=bias_E, n_groups=n_groups,
        topk_groups=topk_groups,
    )  # fmt: skip
    return out.weights_TK, out.ids_TK, out.probs_TE, out.counts_E, out.prob_sum_E, out.z_sum


@fused_route.register_fake
def _(logits_TE, k, score, renormalize, bias_E, n_groups=1, topk_groups=1):
    t, e = logits_TE.shape
    new = logits_TE.new_empty
    return (
        new(t, k),
        new(t, k, dtype=torch.int64),
        new(t, e),
        new(e, dtype=torch.int32),
        new(e),
        new(()),
    )


@torch.library.custom_op(f"{_LIB}::fused_route_backward", mutates_args=())
def fused_route_backward(
    logits_TE: torch.Tensor,
    ids_TK: torch.Tensor,
    dweights_TK: torch.Tensor,
    dprobs_TE: torch.Tensor,
    dprob_sum_E: torch.Tensor,
    dz_sum: torch.Tensor,
    score: str,
    renormalize: bool,
) -> torch.Tensor:
    return topk_routing.topk_route_backward(
        logits_TE, ids_TK, dweights_TK, dprobs_TE, dprob_sum_E, dz_sum,
        score=score, renormalize=renormalize,
    )  # fmt: skip


@fused_route_backward.register_fake
def _(logits_TE, ids_TK, dweights_TK, dprobs_TE, dprob_sum_E, dz_sum, score, renormalize):
    return torch.empty_like(logits_TE)


def _save(ctx, inputs, output):
    logits_TE, _, score, renormalize, *_ = inputs
    ctx.save_for_backward(logits_TE, output[1])
    ctx.score, ctx.renormalize = score, renormalize
    ctx.mark_non_differentiable(output[1], output[3])


def _backward(ctx, dweights_TK, _dids, dprobs_TE, _dcounts, dprob_sum_E, dz_sum):
    logits_TE, ids_TK = ctx.saved_tensors
    dlogits_TE = fused_route_backward(
        logits_TE, ids_TK, dweights_TK, dprobs_TE, dprob_sum_E, dz_sum,
        ctx.score, ctx.renormalize,
    )  # fmt: skip
    return dlogits_TE, None, None, None, None, None, None


fused_route.register_autograd(_backward, setup_context=_save)
