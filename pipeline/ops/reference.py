"""The ``reference`` backend: a readable per-expert loop, the oracle of every backend test.

It is also the fallback of last resort: plain autograd, any dtype, any device, any shape. It runs
in the activations' dtype (weights are cast to it), as autocast would.

Legend: T tokens, K slots per token, E experts, D model dim, F expert hidden.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def swiglu(
    x_ND: torch.Tensor, w1_FD: torch.Tensor, w3_FD: torch.Tensor, w2_DF: torch.Tensor
) -> torch.Tensor:
    """One SwiGLU expert: ``W2 (silu(W1 x) * W3 x)``."""
    return F.linear(F.silu(F.linear(x_ND, w1_FD)) * F.linear(x_ND, w3_FD), w2_DF)


def reference_experts(
    x_TD: torch.Tensor,
    weights_TK: torch.Tensor,
    ids_TK: torch.Tensor,
    w1_EFD: torch.Tensor,
    w3_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
) -> torch.Tensor:
    """``y[t] = Σ_k weights[t, k] · expert_{ids[t, k]}(x[t])``; slots with id -1 contribute nothing."""
    dt = x_TD.dtype
    y_TD = torch.zeros_like(x_TD)
    for e in range(w1_EFD.shape[0]):
        tok, slot = torch.nonzero(ids_TK == e, as_tuple=True)
        if tok.numel() == 0:
            continue
        out_ND = swiglu(x_TD[tok], w1_EFD[e].to(dt), w3_EFD[e].to(dt), w2_EDF[e].to(dt))
        y_TD = y_TD.index_add(0, tok, out_ND * weights_TK[tok, slot].unsqueeze(1).to(dt))
    return y_TD
