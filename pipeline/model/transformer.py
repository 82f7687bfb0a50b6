"""Decoder-only MoE transformer: pre-norm blocks of attention and a dense or MoE feed-forward.

Layer i is MoE when ``i >= first_dense_layers and (i - first_dense_layers) % moe_every == 0``,
dense SwiGLU (``dense_hidden``) otherwise.

Initialisation: every matrix ~ N(0, init_std); the projections that write into the residual
stream (``o_proj``, every ``w2``) use ``init_std / sqrt(2 · n_layers)`` (GPT-2), so the residual
variance does not grow with depth. Norm weights start at 1, the sigmoid router bias at 0.

The model is the spec (:class:`~pipeline.config.ModelConfig`: what the weights mean) plus one
runtime choice, the MoE ``backend`` (:mod:`pipeline.model.backends`), which changes how the
layers compute, never what: the same weights load under any backend.

Shapes (``docs/ARCHITECTURE.md``): B batch, L sequence length, D model dim, V vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.model.experts import GroupedExperts
from pipeline.model.layers import MLP, Attention, RMSNorm, RotaryEmbedding
from pipeline.model.moe import MoELayer
from pipeline.model.routing_stats import RouterStats
from pipeline.ops.linear_cross_entropy import linear_cross_entropy

_RESIDUAL_OUTPUTS = ("o_proj.weight", "w2.weight", ".w2")


def is_moe_layer(cfg: ModelConfig, i: int) -> bool:
    return i >= cfg.first_dense_layers and (i - cfg.first_dense_layers) % cfg.moe_every == 0


@dataclass
class ModelOutput:
    """``logits (B, L, V)``, or ``None`` when the forward was given targets; ``aux_loss``:
    weighted router losses summed over MoE layers (0-dim); ``router_stats``: one
    :class:`RouterStats` per MoE layer, in layer order; ``cross_entropy``: the mean token
    cross-entropy against the targets (fp32, 0-dim), when given."""

    logits: torch.Tensor | None
    aux_loss: torch.Tensor
    router_stats: list[RouterStats]
    cross_entropy: torch.Tensor | None = None


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, backend: str):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.ffn = (
            MoELayer(cfg.d_model, cfg.moe, backend)
            if is_moe_layer(cfg, layer)
            else MLP(cfg.d_model, cfg.dense_hidden)
        )

    def forward(self, x_BLD: torch.Tensor, rope: RotaryEmbedding):
        """Returns the new residual stream and, for an MoE block, ``(aux_loss, stats)``."""
        x_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), rope)
        if isinstance(self.ffn, MoELayer):
            y_BLD, aux, stats = self.ffn(self.ffn_norm(x_BLD))
            return x_BLD + y_BLD, (aux, stats)
        return x_BLD + self.ffn(self.ffn_norm(x_BLD)), None


class MoETransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int, backend: str = "auto"):
        super().__init__()
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.rope = RotaryEmbedding(cfg.d_model // cfg.n_heads, cfg.max_seq_len, cfg.rope_theta)
        self.blocks = nn.ModuleList(Block(cfg, i, backend) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        residual_std = self.cfg.init_std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            owner = self.get_submodule(name.rpartition(".")[0] or "")
            if isinstance(owner, RMSNorm):
                nn.init.ones_(p)
            elif isinstance(owner, GroupedExperts) and p is owner.w13:
                owner.init_gate_up_(self.cfg.init_std)
            elif name.endswith(_RESIDUAL_OUTPUTS):
                nn.init.normal_(p, std=residual_std)
            else:
                nn.init.normal_(p, std=self.cfg.init_std)

    def moe_layers(self) -> list[MoELayer]:
        return [b.ffn for b in self.blocks if isinstance(b.ffn, MoELayer)]

    def forward(self, idx_BL: torch.Tensor, targets_BL: torch.Tensor | None = None) -> ModelOutput:
        """With ``targets_BL``, the head and the loss are one op
        (:func:`~pipeline.ops.linear_cross_entropy.linear_cross_entropy`) and no logits are
        returned: training never needs them, and forming them was the step's largest cost after
        the GEMMs. Inside ``forward``, so that FSDP's hooks see the head's weight used."""
        length = idx_BL.shape[1]
        if length > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {length} exceeds max_seq_len {self.cfg.max_seq_len}")
        if self.training:  # here, not in a block: a recomputed block must not start one
            for layer in self.moe_layers():
                layer.begin_micro_batch()
        x_BLD = self.embed(idx_BL)
        aux_loss = x_BLD.new_zeros((), dtype=torch.float32)
        stats: list[RouterStats] = []
        for block in self.blocks:
            x_BLD, moe = block(x_BLD, self.rope)
            if moe is not None:
                aux_loss = aux_loss + moe[0]
                stats.append(moe[1])
        x_BLD = self.norm(x_BLD)
        if targets_BL is None:
            return ModelOutput(self.lm_head(x_BLD), aux_loss, stats)
        ce = linear_cross_entropy(x_BLD.flatten(0, 1), self.lm_head.weight, targets_BL.flatten())
        return ModelOutput(None, aux_loss, stats, ce)

    def update_router_biases(self) -> None:
        """Call after each optimizer step: applies the aux-loss-free bias update from the
        step's expert counts (a no-op for routers without a bias) and starts counting the next
        step (:meth:`MoELayer.end_step`)."""
        for layer in self.moe_layers():
            layer.end_step()

    def num_params(self) -> dict[str, int]:
        """``total``: every parameter once (tied embeddings once). ``active``: those one token
        uses: all but the ``E - k`` routed experts it does not visit in each MoE layer."""
        total = sum(p.numel() for p in self.parameters())
        idle = sum(
            (m.cfg.num_experts - m.cfg.top_k) * m.experts.params_per_expert()
            for m in self.moe_layers()
        )
        return {"total": total, "active": total - idle}

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B convention:
        ``6 · N + 12 · n_layers · d_model · seq_len``.

        N counts the active parameters that take part in matrix products: the input embedding
        is a lookup, so it is left out unless it is tied to the output head. The attention term
        counts the full L×L score matrix (the convention), not the causal half.
        """
        n = self.num_params()["active"]
        if not self.cfg.tie_embeddings:
            n -= self.embed.weight.numel()
        return 6.0 * n + 12.0 * self.cfg.n_layers * self.cfg.d_model * seq_len

    @torch.no_grad()
    def generate(
        self,
        idx_BL: torch.Tensor,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Append ``max_new_tokens`` sampled tokens (no KV cache: each step re-reads at most the
        last ``max_seq_len`` tokens). ``temperature=0`` is greedy decoding. Call ``eval()``
        first: in training mode expert-choice routing and capacity drops apply."""
        for _ in range(max_new_tokens):
            logits_BV = self(idx_BL[:, -self.cfg.max_seq_len :]).logits[:, -1].float()
            idx_BL = torch.cat((idx_BL, self._sample(logits_BV, temperature, top_k, generator)), 1)
        return idx_BL

    @staticmethod
    def _sample(logits_BV, temperature, top_k, generator) -> torch.Tensor:
        if temperature == 0:
            return logits_BV.argmax(dim=-1, keepdim=True)
        logits_BV = logits_BV / temperature
        if top_k is not None:
            kth = logits_BV.topk(min(top_k, logits_BV.shape[-1]), dim=-1).values[:, -1:]
            logits_BV = logits_BV.masked_fill(logits_BV < kth, -math.inf)
        return torch.multinomial(F.softmax(logits_BV, dim=-1), 1, generator=generator)
