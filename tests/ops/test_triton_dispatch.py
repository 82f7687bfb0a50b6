"""The Triton dispatch ops against plain PyTorch: exact where only data moves.

Oracles: the ``torch`` backend's stable sort (row order), indexing (spread), and a broadcasted
weighted sum (combine). Gradients: fp64 ``gradcheck`` of both ops, weights included.
"""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.ops import torch_dispatch
from pipeline.ops.triton_dispatch import combine, group_by_expert, spread

SEED = int(os.environ["MOE_TEST_SEED"])  # tests/conftest.py: one per session


def _ids(t, k, e, *, empty=None, holes=0, seed=SEED, device="cpu"):
    """Top-k-like ids (distinct per token), expert ``empty`` never used, ``holes`` slots -1."""
    g = torch.Generator().manual_seed(seed)
    pool = [x for x in range(e) if x != empty]
    ids = torch.stack(
        [torch.tensor(pool)[torch.randperm(len(pool), generator=g)[:k]] for _ in range(t)]
    )
    flat = ids.view(-1)
    flat[torch.randperm(flat.numel(), generator=g)[:holes]] = -1
    return ids.to(device)


# (T, K, E, empty expert, -1 holes): k=3, k=E, E=1, T=1, an empty expert, N past one block.
ROUTINGS = [(23, 3, 5, None, 4), (11, 4, 4, None, 0), (9, 1, 1, None, 2), (1, 2, 4, None, 0),
            (17, 2, 6, 3, 0), (700, 3, 7, 2, 9)]  # fmt: skip


@pytest.mark.parametrize("t,k,e,empty,holes", ROUTINGS)
def test_group_by_expert_matches_stable_sort(triton_device, t, k, e, empty, holes):
    ids = _ids(t, k, e, empty=empty, holes=holes, device=triton_device)
    row_TK, tok_S, offs_E = group_by_expert(ids, e)
    slot_S, offs_ref = torch_dispatch.group_by_expert(ids.long(), e)
    expected_row = torch.full((t * k,), -1, dtype=torch.long, device=triton_device)
    expected_row[slot_S] = torch.arange(slot_S.numel(), device=triton_device)
    assert torch.equal(row_TK.view(-1).long(), expected_row), f"seed {SEED}"
    assert torch.equal(offs_E, offs_ref)
    assert torch.equal(tok_S[: slot_S.numel()].long(), slot_S // k)
    assert (tok_S[slot_S.numel() :] == -1).all()
    if empty is not None:
        sizes_E = torch.diff(offs_E, prepend=offs_E.new_zeros(1))
        assert sizes_E[empty] == 0


@pytest.mark.parametrize("t,k,e,d", [(23, 3, 5, 20), (1, 2, 4, 8), (70, 2, 3, 130)])
def test_spread_is_an_exact_gather(triton_device, t, k, e, d):
    ids = _ids(t, k, e, holes=2, device=triton_device)
    row_TK, tok_S, offs_E = group_by_expert(ids, e)
    x = torch.randn(t, d, device=triton_device)
    xs = spread(x, row_TK, t * k, None)
    kept = int(offs_E[-1])
    assert torch.equal(xs[:kept], x[tok_S[:kept].long()])
    assert torch.equal(xs[kept:], torch.zeros_like(xs[kept:]))


@pytest.mark.parametrize("t,k,e,d", [(23, 3, 5, 20), (1, 2, 4, 8), (70, 2, 3, 130)])
def test_combine_matches_weighted_sum_and_is_deterministic(triton_device, t, k, e, d):
    ids = _ids(t, k, e, holes=2, device=triton_device)
    row_TK = group_by_expert(ids, e)[0]
    o = torch.randn(t * k, d, device=triton_device)
    w = torch.rand(t, k, device=triton_device)
    y = combine(o, row_TK, w)
    rows = row_TK.long()
    expected = (o[rows.clamp(min=0)] * (w * (rows >= 0))[..., None]).sum(1)
    # fp32: the same K products summed in slot order; only the summation order may differ.
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(y, combine(o, row_TK, w)), "the combine must be bitwise repeatable"


def test_spread_and_combine_gradcheck_fp64(triton_device):
    t, k, e, d = 5, 2, 3, 3
    row_TK = group_by_expert(_ids(t, k, e, holes=2, device=triton_device), e)[0]
    opts = {"dtype": torch.float64, "device": triton_device, "requires_grad": True}
    x, o, w = torch.randn(t, d, **opts), torch.randn(t * k, d, **opts), torch.rand(t, k, **opts)
    assert torch.autograd.gradcheck(lambda x, w: spread(x, row_TK, t * k, w), (x, w))
    assert torch.autograd.gradcheck(lambda x: spread(x, row_TK, t * k, None), (x,))
    assert torch.autograd.gradcheck(lambda o, w: combine(o, row_TK, w), (o, w))
