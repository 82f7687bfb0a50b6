"""The ``reference`` backend: readable per-expert loops in plain autograd, the oracle of every
backend test and the fallback of last resort (any dtype, any device, any shape).

The experts run in the activations' dtype (weights are cast to it), as autocast would.

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots per token, E experts, S grouped rows,
D model dim, F expert hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def group_by_expert(ids_TK: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(slot_S, offs_E)``: the flat slot ``t·K + k`` of each grouped row, expert by expert and
    in token order within an expert, and the cumulative end row of each expert's group (int32).
    Empty slots (id -1) get no row."""
    flat = ids_TK.reshape(-1)
    slots = [torch.nonzero(flat == e).reshape(-1) for e in range(num_experts)]
    sizes_E = torch.tensor([s.numel() for s in slots], device=flat.device)
    return torch.cat(slots), sizes_E.cumsum(0).to(torch.int32)


def swiglu(
    x_ND: torch.Tensor, w1_FD: torch.Tensor, w3_FD: torch.Tensor, w2_DF: torch.Tensor
) -> torch.Tensor:
    """One SwiGLU expert: ``W2 (silu(W1 x) * W3 x)``."""
    return F.linear(F.silu(F.linear(x_ND, w1_FD)) * F.linear(x_ND, w3_FD), w2_DF)


def swiglu_experts(
    x_TD: torch.Tensor,
    tok_S: torch.Tensor,
    offs_E: torch.Tensor,
    w13_E2FD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """``o[s] = SwiGLU_e(x[tok[s]])`` for the rows ``s`` of each expert ``e``'s group
    (``w13[e]`` stacks expert e's gate and up projections, ``[W1; W3]``)."""
    dt = x_TD.dtype
    outputs, start = [], 0
    for e, end in enumerate(offs_E.tolist()):
        xs_ND = x_TD[tok_S[start:end]]
        w1_FD, w3_FD = w13_E2FD[e].to(dt).chunk(2)
        outputs.append(swiglu(xs_ND, w1_FD, w3_FD, w2_EDF[e].to(dt)))
        start = end
    return torch.cat(outputs) if outputs else x_TD.new_zeros(0, x_TD.shape[1])


def combine(
    out_SD: torch.Tensor, tok_S: torch.Tensor, weight_S: torch.Tensor | None, num_tokens: int
) -> torch.Tensor:
    """``y[t] = Σ_s weight[s] · out[s]`` over the rows ``s`` of token ``t`` (unweighted when
    ``weight_S`` is None)."""
    if weight_S is not None:
        out_SD = out_SD * weight_S.unsqueeze(1).to(out_SD.dtype)
    return out_SD.new_zeros(num_tokens, out_SD.shape[1]).index_add(0, tok_S, out_SD)
