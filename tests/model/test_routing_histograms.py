"""Each MoE layer counts its routing once per forward: the router's ``Routing.counts_E`` feed the
Switch loss, the capacity drops and the logged load; the only other histogram is the dispatcher's
grouping (its offsets describe the assignments left after capacity drops, so they cannot be the
router's). On the triton path the counts and the loss sums come from the fused router.

Counted with a dispatch mode: every ATen op the layer's forward calls, by name.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pipeline.config import MoEConfig
from pipeline.model import MoELayer

HISTOGRAMS = ("aten.bincount", "aten.histc", "aten.scatter_add")


class _OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket).replace("_.", ".").rstrip("_")] += 1
        return func(*args, **(kwargs or {}))


def _forward_ops(backend: str, device: torch.device, **moe) -> Counter[str]:
    cfg = MoEConfig(num_experts=4, top_k=2, expert_hidden=8, **moe)
    layer = MoELayer(16, cfg, backend=backend).to(device).train()
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=g)
    x = torch.randn(2, 9, 16, generator=g).to(device)
    with _OpCounter() as counter:
        layer(x)
    return counter.ops


def _histograms(ops: Counter[str]) -> dict[str, int]:
    return {name: ops[name] for name in HISTOGRAMS if ops[name]}


@pytest.mark.parametrize("capacity_factor", [None, 0.75], ids=["dropless", "capacity"])
def test_torch_path_counts_once_for_the_router_and_once_to_group(capacity_factor):
    ops = _forward_ops("torch", torch.device("cpu"), capacity_factor=capacity_factor)
    assert _histograms(ops) == {"aten.bincount": 2}  # the router's counts, the dispatcher's
    assert ops["aten.logsumexp"] == 1  # the router's z-loss sum, computed once


def test_the_sequence_scope_adds_its_per_sequence_histogram():
    ops = _forward_ops("torch", torch.device("cpu"), balance="sequence")
    assert _histograms(ops) == {"aten.bincount": 2, "aten.scatter_add": 1}


def test_triton_path_takes_counts_and_loss_sums_from_the_fused_router(triton_device):
    ops = _forward_ops("triton", triton_device, capacity_factor=0.75)
    assert ops["moe_triton.fused_route"] == 1 and ops["moe_triton.group_by_expert"] == 1
    assert _histograms(ops) == {}  # counts: the fused router's; grouping: the assign_rows kernel
    assert ops["aten.logsumexp"] == 0  # the z-loss from the kernel's z_sum
