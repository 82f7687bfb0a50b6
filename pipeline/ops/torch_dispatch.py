"""The ``torch`` backend's dispatch and combine: a stable sort by expert, and ``index_add``.

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots per token, E experts, S grouped rows,
D model dim.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def group_by_expert(ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot_S, offs_E)`` as :func:`pipeline.ops.reference.group_by_expert` gives them: a
    histogram (bin 0 counts the empty slots, id -1) and one stable sort."""
    order_S, counts_E = sort_by_expert(ids_TK, num_experts)
    return order_S, counts_E.cumsum(0).to(torch.int32)


@torch.no_grad()
def sort_by_expert(ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot_S, counts_E)``: the flat slots ordered by expert (token order within one), empty
    slots left out, and the number of slots of each expert."""
    flat = ids_TK.reshape(-1)
    counts = torch.bincount(flat + 1, minlength=num_experts + 1)
    return torch.argsort(flat, stable=True)[int(counts[0]) :], counts[1:]


def combine(out_SD: torch.Tensor, tok_S: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """``y[t] = Σ out[s]`` over the rows of token ``t``: the torch experts call it on their
    weighted output rows (:mod:`pipeline.ops.torch_experts`, which applies the routing weights
    to the hidden rows)."""
    return out_SD.new_zeros(num_tokens, out_SD.shape[1]).index_add_(0, tok_S, out_SD)
