"""Dense building blocks: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU MLP.

Conventions follow HF Llama/Mixtral (rotate-half rotary, ``q_proj/k_proj/v_proj/o_proj``,
``w1/w2/w3``) so that the export to transformers is a renaming, not a permutation.

Shapes (``docs/ARCHITECTURE.md``): B batch, L sequence length, D model dim, H query heads,
G key/value heads, Dh head dim, R rotary frequencies (Dh / 2).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.ops.rms_norm import rms_norm


class RMSNorm(nn.Module):
    """``x / rms(x) · weight``, normalised in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x.float(), self.weight.float(), self.eps).type_as(x)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions ``0..max_seq_len-1`` (non-persistent buffers, float32), each
    at the full head width: ``(cos, cos)`` and ``(-sin, sin)``, so that rotating is
    ``x·cos + swap_halves(x)·sin`` (HF's ``rotate_half``) in three elementwise ops."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles_LR = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        cos_LR, sin_LR = angles_LR.cos().float(), angles_LR.sin().float()
        self.register_buffer("cos_LDh", torch.cat((cos_LR, cos_LR), -1), persistent=False)
        self.register_buffer("sin_LDh", torch.cat((-sin_LR, sin_LR), -1), persistent=False)

    def forward(self, x_BLHDh: torch.Tensor) -> torch.Tensor:
        """Rotate each head's two halves by the position's angles. In the projections' own
        (B, L, heads, Dh) layout, which is contiguous: the passes stream through memory."""
        length, half = x_BLHDh.shape[1], x_BLHDh.shape[-1] // 2
        cos_L1Dh, sin_L1Dh = self.cos_LDh[:length, None], self.sin_LDh[:length, None]
        x = x_BLHDh.float()
        return torch.addcmul(x * cos_L1Dh, x.roll(half, -1), sin_L1Dh).type_as(x_BLHDh)


class Attention(nn.Module):
    """Causal grouped-query attention with optional per-head q/k RMSNorm (``qk_norm``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps) if cfg.qk_norm else nn.Identity()

    def forward(self, x_BLD: torch.Tensor, rope: RotaryEmbedding) -> torch.Tensor:
        b, length, _ = x_BLD.shape
        q_BLHDh = rope(self.q_norm(self.q_proj(x_BLD).view(b, length, self.n_heads, -1)))
        k_BLGDh = rope(self.k_norm(self.k_proj(x_BLD).view(b, length, self.n_kv_heads, -1)))
        v_BLGDh = self.v_proj(x_BLD).view(b, length, self.n_kv_heads, -1)
        y_BHLDh = F.scaled_dot_product_attention(
            q_BLHDh.transpose(1, 2),
            k_BLGDh.transpose(1, 2),
            v_BLGDh.transpose(1, 2),
            is_causal=True,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        return self.o_proj(y_BHLDh.transpose(1, 2).reshape(b, length, -1))


class MLP(nn.Module):
    """Dense SwiGLU feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
