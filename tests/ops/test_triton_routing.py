"""The fused Triton router against the PyTorch routers and losses: forward and every gradient;
group-limited routing also against a per-token Python loop of DeepSeek-V3's rule.

Oracle: the ``softmax_topk`` / ``sigmoid_bias`` routers of :mod:`pipeline.model.router` on their
PyTorch path, sums included (counts, per-expert probability sums, the z-loss sum). Logits are random
fp32 drawn afresh (seed in the test id), so top-k ties have probability ~0. Gradients: random
cotangents on every float output (weights, probs, per-expert probability sums, z-loss sum),
compared with autograd through the PyTorch path.
"""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.config import MoEConfig
from pipeline.model.router import build_router
from pipeline.ops.triton_routing import fused_route

SEED = int(os.environ["MOE_TEST_SEED"])  # tests/conftest.py: one per session
ROUTERS = {"softmax": "softmax_topk", "sigmoid": "sigmoid_bias"}
# fp32, same formulas in another order: weights and probs agree to ~1e-7; the sums over T tokens
# and the gradients to a few ulps of their size. A wrong slot, mask or formula gives O(0.1).
FWD_TOL = {"rtol": 1e-6, "atol": 1e-6}
GRAD_TOL = {"rtol": 1e-5, "atol": 1e-6}

# (T, E, k): one token; one expert; k = E; k = 3 with E not a power of two and T past one
# interpreter block (256 tokens); k = 1 over many experts.
SHAPES = [(1, 4, 2), (37, 1, 1), (50, 6, 6), (300, 7, 3), (65, 16, 1)]


def _torch_router(score: str, e: int, k: int, renormalize: bool, bias_E, device, groups=(1, 1)):
    cfg = MoEConfig(num_experts=e, top_k=k, renormalize=renormalize, router=ROUTERS[score],
                    n_groups=groups[0], topk_groups=groups[1])  # fmt: skip
    router = build_router(4, cfg).to(device)
    if bias_E is not None:
        router.expert_bias.copy_(bias_E)
    return router


def _reference(logits_TE, k, score, renormalize, bias_E, groups=(1, 1)):
    """The six outputs of ``fused_route`` from the PyTorch router."""
    e = logits_TE.shape[1]
    router = _torch_router(score, e, k, renormalize, bias_E, logits_TE.device, groups)
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
    _check_against_pytorch(triton_device, score, renormalize, t, e, k, (1, 1))


# (T, E, k, n_groups, topk_groups): one token; groups of 2 with k = every expert of the kept
# groups; 3 groups (not a power of two) of 4 past one interpreter block; k = 1 over 8 groups.
GROUPED = [(1, 4, 2, 2, 1), (40, 6, 4, 3, 2), (50, 8, 3, 4, 2), (300, 12, 4, 3, 2),
           (65, 16, 1, 8, 3)]  # fmt: skip


@pytest.mark.parametrize("t,e,k,n_groups,topk_groups", GROUPED, ids=lambda v: str(v))
@pytest.mark.parametrize("score", ["softmax", "sigmoid"])
def test_group_limited_fused_router_matches_pytorch_router_and_a_loop(
    triton_device, score, t, e, k, n_groups, topk_groups
):
    got = _check_against_pytorch(triton_device, score, True, t, e, k, (n_groups, topk_groups))
    logits_TE, bias_E, ids_TK = got
    key_TE = logits_TE.softmax(-1) if score == "softmax" else logits_TE.sigmoid() + bias_E
    expected = _group_limited_loop(key_TE.tolist(), n_groups, topk_groups, k)
    assert [set(row) for row in ids_TK.tolist()] == expected, f"{score} seed={SEED}"


def _group_limited_loop(key_TE: list[list[float]], n_groups: int, topk_groups: int, k: int):
    """DeepSeek-V3's rule, one token at a time: groups ranked by the sum of their two best
    keys, the best ``topk_groups`` kept, the top-k of their experts."""
    chosen = []
    for key_E in key_TE:
        size = len(key_E) // n_groups
        members = [range(g * size, (g + 1) * size) for g in range(n_groups)]
        score = [sum(sorted((key_E[i] for i in group), reverse=True)[:2]) for group in members]
        kept = sorted(range(n_groups), key=lambda g: -score[g])[:topk_groups]
        candidates = [i for g in kept for i in members[g]]
        chosen.append(set(sorted(candidates, key=lambda i: -key_E[i])[:k]))
    return chosen


def _check_against_pytorch(device, score, renormalize, t, e, k, groups):
    """Every output of the fused op and the gradient of the logits against the PyTorch router;
    returns the logits, the bias and the fused ids."""
    g = torch.Generator().manual_seed(SEED + 7919 * t + e + k + 31 * (groups[0] - 1))
    logits_TE = (2 * torch.randn(t, e, generator=g)).to(device).requires_grad_()
    bias_E = (0.5 * torch.randn(e, generator=g)).to(device) if score == "sigmoid" else None
    got = fused_route(logits_TE, k, score, renormalize, bias_E, *groups)
    want = _reference(logits_TE, k, score, renormalize, bias_E, groups)
    msg = f"{score} renorm={renormalize} T={t} E={e} k={k} groups={groups} seed={SEED}"
    names = ("weights", "ids", "probs", "counts", "prob_sum", "z_sum")
    for name, a, b in zip(names, got, want, strict=True):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{msg}: {name}"
        if name in ("ids", "counts"):
            assert torch.equal(a, b), f"{msg}: {name}"
        else:
            torch.testing.assert_close(a, b, **FWD_TOL, msg=lambda m, n=name: f"{msg}: {n}\n{m}")
    cotangents = [torch.randn(o.shape, generator=g).to(device) for o in (got[0], got[2], got[4])]
    cotangents.append(torch.randn((), generator=g).to(device))
    torch.testing.assert_close(
        _grads(got, logits_TE, cotangents), _grads(want, logits_TE, cotangents), **GRAD_TOL,
        msg=lambda m: f"{msg}: dlogits\n{m}",
    )  # fmt: skip
    return logits_TE.detach(), bias_E, got[1]


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
    backend resolves to triton) routes through the fused op, and the Routing, sums included,
    equals the PyTorch path's."""
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
