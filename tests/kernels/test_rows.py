"""Row assignment, permute and combine against plain PyTorch: exact where only data moves.

Oracles: the ``torch`` backend's stable sort (row order), the layer's ``position`` capacity
policy (which assignments are kept), indexing (permute), and a broadcasted weighted sum
(combine). Gradients: fp64 ``gradcheck`` of both ops, weights included.
"""

from __future__ import annotations

import random

import pytest
import torch

from pipeline.kernels.launch import KernelInputError
from pipeline.model.losses import capacity_keep_mask
from pipeline.ops.sorted_experts import _sort_assignments
from pipeline.ops.triton_rows import assign_rows, gather_sum, scatter_rows

SEED = random.randrange(2**31)


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
def test_assign_rows_matches_stable_sort(device, t, k, e, empty, holes):
    ids = _ids(t, k, e, empty=empty, holes=holes, device=device)
    row_TK, tok_S, offs_E, counts_E = assign_rows(ids, e, -1)
    order_S, offs_ref = _sort_assignments(ids.long(), e)
    expected_row = torch.full((t * k,), -1, dtype=torch.long, device=device)
    expected_row[order_S] = torch.arange(order_S.numel(), device=device)
    assert torch.equal(row_TK.view(-1).long(), expected_row), f"seed {SEED}"
    assert torch.equal(offs_E, offs_ref)
    assert torch.equal(counts_E.long(), torch.bincount(ids.view(-1) + 1, minlength=e + 1)[1:])
    assert torch.equal(tok_S[: order_S.numel()].long(), order_S // k)
    assert (tok_S[order_S.numel() :] == -1).all()
    if empty is not None:
        assert counts_E[empty] == 0


@pytest.mark.parametrize(
    "t,k,e,capacity", [(30, 2, 4, 7), (6, 1, 3, 1), (700, 3, 7, 250), (8, 2, 2, 0)]
)
def test_assign_rows_capacity_keeps_the_first_assignments(device, t, k, e, capacity):
    ids = _ids(t, k, e, holes=3, device=device)
    row_TK, tok_S, offs_E, counts_E = assign_rows(ids, e, capacity)
    keep = capacity_keep_mask(ids.float(), ids.clamp(min=0) + e * (ids < 0), capacity, "position")
    keep &= ids >= 0
    kept_ids = torch.where(keep, ids, -1)
    order_S, offs_ref = _sort_assignments(kept_ids.long(), e)
    expected_row = torch.full((t * k,), -1, dtype=torch.long, device=device)
    expected_row[order_S] = torch.arange(order_S.numel(), device=device)
    assert torch.equal(row_TK.view(-1).long(), expected_row), f"seed {SEED}"
    assert torch.equal(offs_E, offs_ref)
    dropped = counts_E.sum() - offs_E[-1]
    assert dropped == int((ids >= 0).sum() - keep.sum())
    if (ids >= 0).sum() > capacity * e:  # pigeonhole: something must be dropped
        assert dropped > 0


@pytest.mark.parametrize("t,k,e,d", [(23, 3, 5, 20), (1, 2, 4, 8), (70, 2, 3, 130)])
def test_permute_is_an_exact_gather(device, t, k, e, d):
    ids = _ids(t, k, e, holes=2, device=device)
    row_TK, tok_S, offs_E, _ = assign_rows(ids, e, -1)
    x = torch.randn(t, d, device=device)
    xs = scatter_rows(x, row_TK, t * k, None)
    kept = int(offs_E[-1])
    assert torch.equal(xs[:kept], x[tok_S[:kept].long()])
    assert torch.equal(xs[kept:], torch.zeros_like(xs[kept:]))


@pytest.mark.parametrize("t,k,e,d", [(23, 3, 5, 20), (1, 2, 4, 8), (70, 2, 3, 130)])
def test_combine_matches_weighted_sum_and_is_deterministic(device, t, k, e, d):
    ids = _ids(t, k, e, holes=2, device=device)
    row_TK = assign_rows(ids, e, -1)[0]
    o = torch.randn(t * k, d, device=device)
    w = torch.rand(t, k, device=device)
    y = gather_sum(o, row_TK, w)
    rows = row_TK.long()
    expected = (o[rows.clamp(min=0)] * (w * (rows >= 0))[..., None]).sum(1)
    # fp32: the same K products summed in slot order; only the summation order may differ.
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(y, gather_sum(o, row_TK, w)), "the combine must be bitwise repeatable"


def test_permute_and_combine_gradcheck_fp64(device):
    t, k, e, d = 5, 2, 3, 3
    row_TK = assign_rows(_ids(t, k, e, holes=2, device=device), e, -1)[0]
    opts = {"dtype": torch.float64, "device": device, "requires_grad": True}
    x, o, w = torch.randn(t, d, **opts), torch.randn(t * k, d, **opts), torch.rand(t, k, **opts)
    assert torch.autograd.gradcheck(lambda x, w: scatter_rows(x, row_TK, t * k, w), (x, w))
    assert torch.autograd.gradcheck(lambda x: scatter_rows(x, row_TK, t * k, None), (x,))
    assert torch.autograd.gradcheck(lambda o, w: gather_sum(o, row_TK, w), (o, w))


def test_launchers_reject_bad_inputs():
    ids = torch.zeros(4, 2, dtype=torch.int64)
    row_TK = assign_rows(ids, 2, -1)[0]
    with pytest.raises(KernelInputError, match="dtype"):
        assign_rows(ids.float(), 2, -1)
    with pytest.raises(KernelInputError, match=r"weights_TK: expected shape \(4, 2\)"):
        gather_sum(torch.randn(8, 3), row_TK, torch.rand(4, 3))
    with pytest.raises(KernelInputError, match="contiguous"):
        scatter_rows(torch.randn(3, 4).t(), row_TK, 8, None)
    with pytest.raises(KernelInputError, match=r"row_TK: expected shape \(5, \*\)"):
        scatter_rows(torch.randn(5, 4), row_TK, 8, None)
