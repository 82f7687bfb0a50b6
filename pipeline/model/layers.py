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


class RMSNorm(nn.Module):
    """``x / rms(x) · weight``, normalised in float32 whatever the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.square().mean(dim=-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight.type_as(x)


class RotaryEmbedding(nn.Module):
    """cos/sin tables for positions ``0..max_seq_len-1`` (non-persistent buffers, float32)."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embeddings need an even head dim, got {head_dim}")
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles_LR = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("cos_LR", angles_LR.cos().float(), persistent=False)
        self.register_buffer("sin_LR", angles_LR.sin().float(), persistent=False)

    def forward(self, x_BHLDh: torch.Tensor) -> torch.Tensor:
        """Rotate each head's two halves by the position's angles (HF's ``rotate_half``)."""
        length = x_BHLDh.shape[-2]
        cos, sin = self.cos_LR[:length], self.sin_LR[:length]
        x1, x2 = x_BHLDh.float().chunk(2, dim=-1)
        rotated = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return rotated.type_as(x_BHLDh)


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
        q_BHLDh = self._heads(self.q_norm, self.q_proj(x_BLD), self.n_heads)
        k_BGLDh = self._heads(self.k_norm, self.k_proj(x_BLD), self.n_kv_heads)
        v_BGLDh = self.v_proj(x_BLD).view(b, length, self.n_kv_heads, -1).transpose(1, 2)
        y_BHLDh = F.scaled_dot_product_attention(
            rope(q_BHLDh),
            rope(k_BGLDh),
            v_BGLDh,
            is_causal=True,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        return self.o_proj(y_BHLDh.transpose(1, 2).reshape(b, length, -1))

    @staticmethod
    def _heads(norm: nn.Module, proj: torch.Tensor, n: int) -> torch.Tensor:
        """``proj`` (B, L, n·Dh) → normalised heads (B, n, L, Dh)."""
        b, length, _ = proj.shape
        return norm(proj.view(b, length, n, -1)).transpose(1, 2)


class MLP(nn.Module):
    """Dense SwiGLU feed-forward: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden, bias=False)
        self.w3 = nn.Linear(d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
