"""The fused Triton router against the PyTorch routers and losses: forward and every gradient.

Oracle: the ``softmax_topk`` / ``sigmoid_bias`` routers of :mod:`pipeline.model.router` on their
PyTorch path, sums included (counts, per-expert probability sums, the z-loss sum). Logits are random
fp32 drawn afresh (seed in the test id), so top-k ties have probability ~0. Gradients: random
cotangents on every float output (weights, probs, per-expert probability sums, z-loss sum),
compared with autograd through the PyTorch path.
"""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.config import MoEConfig
from pipeline.model.router import build_router
from pipeline.ops.triton_routing import fused_route

SEED = random.randrange(2**31)
ROUTERS = {"softmax": "softmax_topk", "sigmoid": "sigmoid_bias"}
# fp32, same formulas in another order: weights and probs agree to ~1e-7; the sums over T tokens
# and the gradients to a few ulps of their size. A wrong slot, mask or formula gives O(0.1).
FWD_TOL = {"rtol": 1e-6, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-6}

# (T, E, k): one token; one expert; k = E; k = 3 with E not a power of two and T past one
# interpreter block (256 tokens); k = 1 over many experts.
SHAPES = [(1, 4, 2), (37, 1, 1), (50, 6, 6), (300, 7, 3), (65, 16, 1)]


def _torch_router(score: str, e: int, k: int, renormalize: bool, bias_E, device):
    cfg = MoEConfig(num_experts=e, top_k=k, renormalize=renormalize, router=ROUTERS[score])
    router = build_router(4, cfg).to(device)
    if bias_E is not None:
        router.expert_bias.copy_(bias_E)
    return router


def _reference(logits_TE, k, score, renormalize, bias_E):
    """The six outputs of ``fused_route`` from the PyTorch router."""
    e = logits_TE.shape[1]
    router = _torch_router(score, e, k, renormalize, bias_E, logits_TE.device)
    r = router.route(logits_TE, fused=False)
    counts_E = r.counts_E.to(torch.int32)
    return r.weights_TK, r.expert_ids_TK, r.probs_TE, counts_E, r.prob_sum_E, r.z_sum


def _grads(outputs, logits_TE, cotangents):
    floats = [outputs[i] for i in (0, 2, 4, 5)]
    loss = sum((o * c).sum() for o, c in zip(floats, cotangents, strict=True))
    return torch.autograd.grad(loss, logits_TE)[0]


@pytest.mark.parametrize("t,e,k", SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("renormalize", [True, False], ids=["renorm", "raw"])
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_fused_router_matches_pytorch_router(triton_device, score, renormalize, t, e, k):
    g = torch.Generator().manual_seed(SEED + 7919 * t + e + k)
    logits_TE = (2 * torch.randn(t, e, generator=g)).to(triton_device).requires_grad_()
    bias_E = (0.5 * torch.randn(e, generator=g)).to(triton_device) if score == "sigmoid" else None
    got = fused_route(logits_TE, k, score, renormalize, bias_E)
    want = _reference(logits_TE, k, score, renormalize, bias_E)
    msg = f"{score} renorm={renormalize} T={t} E={e} k={k} seed={SEED}"
    names = ("weights", "ids", "probs", "counts", "prob_sum", "z_sum")
    for name, a, b in zip(names, got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{msg}: {name}"
        if name in ("ids", "counts"):
            assert torch.equal(a, b), f"{msg}: {name}"
        else:
            torch.testing.assert_close(a, b, **FWD_TOL, msg=lambda m, n=name: f"{msg}: {n}\n{m}")
    cotangents = [
        torch.randn(o.shape, generator=g).to(triton_device) for o in (got[0], got[2], got[4])
    ]
    cotangents.append(torch.randn((), generator=g).to(triton_device))
    torch.testing.assert_close(
        _grads(got, logits_TE, cotangents), _grads(want, logits_TE, cotangents), **GRAD_TOL,
        msg=lambda m: f"{msg}: dlogits\n{m}",
    )  # fmt: skip


def test_bias_changes_selection_only(triton_device):
    """A large bias on one expert forces it into every token's top-k; its weight stays the
    unbiased sigmoid score (normalised over the k)."""
    logits_TE = torch.randn(20, 5, generator=torch.Generator().manual_seed(SEED)).to(triton_device)
    bias_E = torch.tensor([0.0, 0.0, 0.0, 10.0, 0.0], device=triton_device)
    weights_TK, ids_TK, *_ = fused_route(logits_TE, 2, "sigmoid", False, bias_E)
    assert (ids_TK[:, 0] == 3).all()
    torch.testing.assert_close(weights_TK[:, 0], logits_TE[:, 3].sigmoid(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_fused_router_gradcheck_fp64(triton_device, score):
    logits_TE = torch.randn(6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    logits_TE = logits_TE.to(triton_device).requires_grad_()
    bias_E = logits_TE.new_zeros(5).detach() if score == "sigmoid" else None

    def floats(logits):
        w, _, p, _, s, z = fused_route(logits, 3, score, True, bias_E)
        return w, p, s, z

    assert torch.autograd.gradcheck(floats, (logits_TE,))


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_bias"])
def test_fused_and_plain_routing_are_the_same_routing(triton_device, router):
    """The hook in pipeline.model.router: ``fused=True`` (what the MoE layer passes when its
    backend resolves to triton) routes through the fused op, and the Routing, sums included
    (and the sigmoid router's load counts), equals the PyTorch path's."""
    x_TD = torch.randn(33, 8, generator=torch.Generator().manual_seed(SEED)).to(triton_device)
    routers = []
    for _ in ("fused", "plain"):
        r = build_router(8, MoEConfig(num_experts=5, top_k=2, router=router))
        torch.nn.init.normal_(r.weight, generator=torch.Generator().manual_seed(0))
        routers.append(r.to(triton_device))
    fused, plain = routers[0](x_TD, fused=True), routers[1](x_TD, fused=False)
    assert torch.equal(fused.expert_ids_TK, plain.expert_ids_TK)
    assert torch.equal(fused.counts_E, plain.counts_E)
    for name in ("weights_TK", "probs_TE", "prob_sum_E", "z_sum"):
        torch.testing.assert_close(getattr(fused, name), getattr(plain, name), **FWD_TOL)
    if router == "sigmoid_bias":
        assert torch.equal(routers[0]._load_E, routers[1]._load_E)
