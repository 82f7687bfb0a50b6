"""The routed experts: E SwiGLU feed-forward networks as stacked weights, run over the rows a
dispatcher grouped for them (:class:`~pipeline.model.dispatch.ExpertRows`).

Weights: ``w13 (E, 2F, D)`` and ``w2 (E, D, F)``. ``w13[e, :F]`` is the gate projection
(HF Mixtral's per-expert ``w1``, ``nn.Linear(D, F).weight``) and ``w13[e, F:]`` the up
projection (``w3``): both projections of a row are one GEMM over one operand, stored once, so
no backend concatenates (and saves for the backward) a copy of two thirds of the expert weights
on every forward. Under expert parallelism the module holds only this rank's block,
``(e, ...)``, and ``shard`` says which.

Older checkpoints hold ``w1, w3 (E, F, D)`` as two tensors; :meth:`GroupedExperts.__init__`
registers a state-dict pre-hook that stacks them on load (and logs that it did).

Shapes (``docs/ARCHITECTURE.md``): E experts (e on this rank), F expert hidden, D model dim,
S grouped rows.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from pipeline.model.dispatch import ExpertRows, ExpertShard
from pipeline.ops import reference, torch_experts

log = logging.getLogger(__name__)


class GroupedExperts(nn.Module):
    """The experts' weights; :func:`swiglu_experts` runs them (the MoE layer calls it through
    :func:`pipeline.model.moe.routed_experts`)."""

    def __init__(self, num_experts: int, d_model: int, hidden: int):
        super().__init__()
        self.w13 = nn.Parameter(torch.empty(num_experts, 2 * hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.shard: ExpertShard | None = None
        self.register_load_state_dict_pre_hook(_stack_gate_and_up)

    def params_per_expert(self) -> int:
        return self.w13[0].numel() + self.w2[0].numel()

    @torch.no_grad()
    def init_gate_up_(self, std: float) -> None:
        """``w13 ~ N(0, std)`` drawn as the separate ``w1`` and ``w3`` of the older layout were:
        all gate projections, then all up projections, each as one contiguous ``(E, F, D)``
        draw (a strided draw takes another path through the generator), so a seed gives the
        same weights as before the two were stacked."""
        hidden = self.w2.shape[2]
        for half in (self.w13[:, :hidden], self.w13[:, hidden:]):
            half.copy_(
                torch.empty(half.shape, dtype=half.dtype, device=half.device).normal_(0, std)
            )


def _stack_gate_and_up(module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):  # fmt: skip
    """Load-time conversion of the older layout: ``<prefix>w1`` and ``<prefix>w3`` (E, F, D)
    become ``<prefix>w13`` (E, 2F, D), in place in the state dict being loaded."""
    gate, up = state_dict.get(prefix + "w1"), state_dict.get(prefix + "w3")
    if gate is None or up is None or prefix + "w13" in state_dict:
        return
    state_dict[prefix + "w13"] = torch.cat([state_dict.pop(prefix + "w1"), state_dict.pop(prefix + "w3")], dim=1)  # fmt: skip
    log.info(
        "%sw1 + %sw3 %s: older layout, stacked into %sw13 %s on load",
        prefix, prefix, tuple(gate.shape), prefix, tuple(state_dict[prefix + "w13"].shape),
    )  # fmt: skip


def swiglu_experts(rows: ExpertRows, w13_E2FD: torch.Tensor, w2_EDF: torch.Tensor) -> torch.Tensor:
    """Each grouped row through its expert, with the backend that grouped it: ``(S, D)``, or
    for the torch backend ``(T, D)``, the rows already summed per token (the combine fused)."""
    if rows.backend == "triton":
        from pipeline.ops import triton_experts  # imports Triton: see pipeline.ops

        return triton_experts.swiglu_experts(
            rows.x_TD, rows.row_TK, rows.tok_S, rows.offs_E, w13_E2FD, w2_EDF
        )
    if rows.backend == "reference":
        return reference.swiglu_experts(rows.x_TD, rows.tok_S, rows.offs_E, w13_E2FD, w2_EDF)
    return torch_experts.swiglu_experts(
        rows.x_TD, rows.tok_S, rows.offs_E, rows.weight_S, w13_E2FD, w2_EDF
    )
