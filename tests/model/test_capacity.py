"""Expert capacity: slots per expert and which assignments each policy keeps."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.capacity import capacity_keep_mask, expert_capacity


def test_capacity_hand_computed_case():
    # E=2, k=1, T=6, factor 0.5: capacity = ceil(0.5 * 6 * 1 / 2) = 2 slots per expert.
    ids = torch.tensor([[0], [0], [0], [1], [0], [1]])
    weights = torch.tensor([[0.9], [0.6], [0.8], [0.7], [0.95], [0.5]])
    cap = expert_capacity(6, 1, 2, 0.5)
    assert cap == 2
    counts = torch.tensor([4.0, 2.0])  # the router's assignment counts
    by_prob = capacity_keep_mask(weights, ids, counts, cap, "probability").flatten()
    assert by_prob.tolist() == [True, False, False, True, True, True]  # expert 0 keeps .95, .9
    by_pos = capacity_keep_mask(weights, ids, counts, cap, "position").flatten()
    assert by_pos.tolist() == [True, True, False, True, False, True]  # expert 0 keeps tokens 0, 1
    assert 1 - by_prob.float().mean() == pytest.approx(2 / 6)


def test_capacity_position_policy_orders_slots_within_a_token():
    ids = torch.tensor([[0, 1], [1, 0]])
    counts = torch.tensor([2.0, 2.0])
    keep = capacity_keep_mask(torch.ones(2, 2), ids, counts, capacity=1, policy="position")
    assert keep.tolist() == [[True, True], [False, False]]
