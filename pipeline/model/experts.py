"""The routed experts: E SwiGLU feed-forward networks as stacked weights, run over the rows a
dispatcher grouped for them (:class:`~pipeline.model.dispatch.ExpertRows`).

Weights: ``w1, w3 (E, F, D)``, ``w2 (E, D, F)``, so ``w1[e]`` is exactly the
``nn.Linear(D, F).weight`` of expert e (HF Mixtral's per-expert ``w1``). Under expert
parallelism the module holds only this rank's block, ``(e, ...)``, and ``shard`` says which.

Shapes (``docs/ARCHITECTURE.md``): E experts (e on this rank), F expert hidden, D model dim,
S grouped rows.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.model.dispatch import ExpertRows, ExpertShard
from pipeline.ops import reference, torch_experts


class GroupedExperts(nn.Module):
    """The experts' weights; :func:`swiglu_experts` runs them (the MoE layer calls it through
    :func:`pipeline.model.moe.routed_experts`)."""

    def __init__(self, num_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w3 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.shard: ExpertShard | None = None

    def params_per_expert(self) -> int:
        return self.w1[0].numel() + self.w3[0].numel() + self.w2[0].numel()


def swiglu_experts(
    rows: ExpertRows, w1_EFD: torch.Tensor, w3_EFD: torch.Tensor, w2_EDF: torch.Tensor
) -> torch.Tensor:
    """``(S, D)``: each grouped row through its expert, with the backend that grouped it."""
    if rows.backend == "triton":
        from pipeline.ops import triton_experts  # imports Triton: see pipeline.ops

        return triton_experts.swiglu_experts(
            rows.x_TD, rows.row_TK, rows.tok_S, rows.offs_E, w1_EFD, w3_EFD, w2_EDF
        )
    if rows.backend == "reference":
        return reference.swiglu_experts(rows.x_TD, rows.tok_S, rows.offs_E, w1_EFD, w3_EFD, w2_EDF)
    return torch_experts.swiglu_experts(
        rows.x_TD, rows.tok_S, rows.offs_E, rows.weight_S, w1_EFD, w3_EFD, w2_EDF
    )
