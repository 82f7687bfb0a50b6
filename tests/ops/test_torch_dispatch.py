"""Grouping by expert: the torch backend's stable sort against the reference's per-expert loop,
and the combine's sums; exact, since only indices and copies are involved."""

from __future__ import annotations

import os

import pytest
import torch

from pipeline.ops import reference, torch_dispatch

SEED = int(os.environ["MOE_TEST_SEED"])  # tests/conftest.py: one per session


def test_group_by_expert_is_stable_and_skips_empty_slots():
    ids_TK = torch.tensor([[2, 0], [-1, 2], [0, -1], [2, 1]])
    slot_S, offs_E = torch_dispatch.group_by_expert(ids_TK, num_experts=4)
    flat = ids_TK.reshape(-1)
    assert slot_S.tolist() == [1, 4, 7, 0, 3, 6]  # expert 0: slots 1, 4; 1: 7; 2: 0, 3, 6
    assert flat[slot_S].tolist() == [0, 0, 1, 2, 2, 2]
    assert offs_E.tolist() == [2, 3, 6, 6]  # expert 3 is empty
    assert offs_E.dtype == torch.int32


@pytest.mark.parametrize("t,k,e", [(23, 3, 5), (1, 1, 1), (40, 2, 9)])
def test_sort_equals_the_reference_loop(t, k, e):
    g = torch.Generator().manual_seed(SEED)
    ids_TK = torch.randint(-1, e, (t, k), generator=g)
    got = torch_dispatch.group_by_expert(ids_TK, e)
    want = reference.group_by_expert(ids_TK, e)
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b), f"seed {SEED}"


def test_combine_sums_rows_per_token():
    out_SD = torch.arange(12.0).view(4, 3)
    tok_S = torch.tensor([2, 0, 2, 1])
    y = torch_dispatch.combine(out_SD, tok_S, num_tokens=4)
    assert torch.equal(
        y, torch.stack([out_SD[1], out_SD[3], out_SD[0] + out_SD[2], torch.zeros(3)])
    )
    weight_S = torch.tensor([0.5, 2.0, 1.0, 1.0])
    y_ref = reference.combine(out_SD, tok_S, weight_S, num_tokens=4)
    assert torch.equal(y_ref[0], 2.0 * out_SD[1])
