"""The kernel launchers refuse bad inputs with the tensor's name and the expected and actual
shape, dtype or layout, before anything is launched (the checks run on any device)."""

from __future__ import annotations

import pytest
import torch

from pipeline.kernels import row_assignment, rows, topk_routing
from pipeline.kernels.launch import KernelInputError


def test_row_launchers_reject_bad_inputs():
    ids = torch.zeros(4, 2, dtype=torch.int64)
    row_TK = torch.zeros(4, 2, dtype=torch.int32)
    with pytest.raises(KernelInputError, match="dtype"):
        row_assignment.assign_rows(ids.float(), 2)
    with pytest.raises(KernelInputError, match=r"weights_TK: expected shape \(4, 2\)"):
        rows.gather_sum(torch.randn(8, 3), row_TK, torch.rand(4, 3))
    with pytest.raises(KernelInputError, match="contiguous"):
        rows.scatter_rows(torch.randn(3, 4).t(), row_TK, 8, None)
    with pytest.raises(KernelInputError, match=r"row_TK: expected shape \(5, \*\)"):
        rows.scatter_rows(torch.randn(5, 4), row_TK, 8, None)


def test_routing_launcher_rejects_bad_inputs():
    logits_TE = torch.randn(4, 3)
    route = topk_routing.topk_route
    with pytest.raises(KernelInputError, match="dtype"):
        route(logits_TE.bfloat16(), 2)
    with pytest.raises(KernelInputError, match=r"k: expected 1 <= k <= 3"):
        route(logits_TE, 4)
    with pytest.raises(KernelInputError, match="score"):
        route(logits_TE, 2, score="tanh")
    with pytest.raises(KernelInputError, match="only defined for sigmoid"):
        route(logits_TE, 2, score="softmax", bias_E=torch.zeros(3))
    with pytest.raises(KernelInputError, match=r"bias_E: expected shape \(3\)"):
        route(logits_TE, 2, score="sigmoid", bias_E=torch.zeros(4))
    logits_TE = torch.randn(4, 6)
    with pytest.raises(KernelInputError, match="n_groups: expected 1, or a divisor of 6"):
        route(logits_TE, 2, n_groups=4, topk_groups=1)  # 6 experts do not split into 4 groups
    with pytest.raises(KernelInputError, match="n_groups: .* groups of at least 2, got 6"):
        route(logits_TE, 1, n_groups=6, topk_groups=1)  # groups of one have no top-2
    with pytest.raises(KernelInputError, match="topk_groups: expected 1 <= topk_groups <= 3"):
        route(logits_TE, 2, n_groups=3, topk_groups=4)
    with pytest.raises(KernelInputError, match="holding at least k = 3 experts, got 1"):
        route(logits_TE, 3, n_groups=3, topk_groups=1)  # one group of 2 cannot hold 3 picks
