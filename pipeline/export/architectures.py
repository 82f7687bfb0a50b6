"""Which ``transformers`` architecture expresses a trained model exactly, and the renaming into it.

The project's blocks follow HF conventions (rotate-half RoPE, pre-norm RMSNorm, SwiGLU, a linear
router on float32 logits), so an export is a renaming of tensors plus a config; nothing is
approximated. Two architectures are used, in this order:

* ``qwen3_moe`` (``Qwen3MoeForCausalLM``) when ``qk_norm`` is on: per-head q/k RMSNorm, top-k
  softmax routing with ``norm_topk_prob = renormalize``, dense layers anywhere through
  ``mlp_only_layers`` (so ``first_dense_layers`` and ``moe_every`` map exactly, with
  ``decoder_sparse_step = 1``), separate ``intermediate_size`` (dense) and
  ``moe_intermediate_size`` (experts).
* ``mixtral`` (``MixtralForCausalLM``) when ``qk_norm`` is off: it has no q/k norm, but it
  always renormalises the top-k weights and has no dense layers, so it needs
  ``renormalize: true``, ``first_dense_layers: 0`` and ``moe_every: 1``.

Refused, with the parameter named: ``router: sigmoid_bias`` (the only architectures with
DeepSeek-V3 bias routing, deepseek_v3 and glm4_moe, have other attention: MLA, partial RoPE),
group-limited routing (``n_groups`` with ``topk_groups < n_groups``: qwen3_moe and mixtral have
no expert groups; deepseek_v3's router has them, ``n_group`` / ``topk_group`` ranking groups by
the sum of their two best biased sigmoid scores as this project does, but its attention is MLA,
whose ``kv_a_layernorm`` normalises the compressed key/value latent, so no choice of its
weights computes this model's grouped-query attention with per-head q/k norms; and it has no
softmax router) and ``num_shared_experts > 0`` (qwen2_moe's shared expert is scaled by a learned
sigmoid gate, so an ungated sum is not expressible). ``router: expert_choice`` is exported: in
eval mode it routes by token-choice top-k softmax (see :mod:`pipeline.model.router`), which is
what the export does.
Capacity factors do not matter: inference is dropless in both implementations.

Checkpoints are written in the hub layout of each architecture (one tensor per expert:
``mlp.experts.<e>.gate_proj.weight`` / ``block_sparse_moe.experts.<e>.w1.weight``), which
transformers 5 fuses on load and older readers load as is.

Shapes (``docs/ARCHITECTURE.md``): E experts, F expert hidden, D model dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.config import ModelConfig
from pipeline.errors import PipelineError
from pipeline.model import MoETransformer
from pipeline.model.layers import MLP
from pipeline.model.moe import MoELayer
from pipeline.model.transformer import is_moe_layer


class ExportError(PipelineError):
    """The model cannot be exported, or an exported directory is incomplete or corrupted."""


@dataclass(frozen=True)
class Architecture:
    """How one ``transformers`` architecture names things; ``expert_names`` are the names of
    the project's gate and up projections (the two halves of ``w13``) and ``w2`` (down) inside
    one expert."""

    model_type: str
    class_name: str
    moe_module: str
    expert_names: tuple[str, str, str]


QWEN3_MOE = Architecture(
    "qwen3_moe", "Qwen3MoeForCausalLM", "mlp", ("gate_proj", "up_proj", "down_proj")
)
MIXTRAL = Architecture("mixtral", "MixtralForCausalLM", "block_sparse_moe", ("w1", "w3", "w2"))
ARCHITECTURES = {a.model_type: a for a in (QWEN3_MOE, MIXTRAL)}


def choose_architecture(cfg: ModelConfig) -> Architecture:
    """The architecture that computes exactly what ``cfg`` computes in eval mode, or an
    :class:`ExportError` naming the ``train.model`` keys that no architecture can express."""
    moe = cfg.moe
    if moe.group_limited:
        raise ExportError(
            f"train.model.moe.n_groups = {moe.n_groups} with topk_groups = {moe.topk_groups}: "
            "no transformers architecture expresses group-limited routing with this model's "
            "attention (deepseek_v3 has n_group / topk_group but MLA attention and sigmoid "
            "routing only; qwen3_moe and mixtral have no groups); export needs n_groups: 1 or "
            "topk_groups = n_groups"
        )
    if moe.router == "sigmoid_bias":
        raise ExportError(
            "train.model.moe.router = 'sigmoid_bias': no transformers architecture combines "
            "DeepSeek-V3 bias routing with this model's attention (deepseek_v3 uses MLA, "
            "glm4_moe partial RoPE); export supports softmax_topk and expert_choice"
        )
    if moe.num_shared_experts:
        raise ExportError(
            f"train.model.moe.num_shared_experts = {moe.num_shared_experts}: no transformers "
            "architecture adds an ungated shared expert (qwen2_moe gates it with a learned "
            "sigmoid); export needs num_shared_experts: 0"
        )
    if cfg.qk_norm:
        return QWEN3_MOE
    mixtral_needs = {
        "train.model.moe.renormalize": (moe.renormalize, True),
        "train.model.first_dense_layers": (cfg.first_dense_layers, 0),
        "train.model.moe_every": (cfg.moe_every, 1),
    }
    wrong = [f"{k} = {v} (needs {want})" for k, (v, want) in mixtral_needs.items() if v != want]
    if wrong:
        raise ExportError(
            "train.model.qk_norm = false needs the mixtral architecture, which cannot express "
            + "; ".join(wrong)
            + " (or train with qk_norm: true for qwen3_moe)"
        )
    return MIXTRAL


def hf_config(cfg: ModelConfig, vocab_size: int, eot_id: int, dtype: str):
    """The ``transformers`` config of the chosen architecture (a ``PretrainedConfig``)."""
    arch = choose_architecture(cfg)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.d_model,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads,
        hidden_act="silu",
        max_position_embeddings=cfg.max_seq_len,
        initializer_range=cfg.init_std,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        num_experts_per_tok=cfg.moe.top_k,
        router_aux_loss_coef=cfg.moe.aux_loss_weight,
        bos_token_id=eot_id,
        eos_token_id=eot_id,
        pad_token_id=eot_id,
        dtype=dtype,
        architectures=[arch.class_name],
    )
    if arch is QWEN3_MOE:
        from transformers import Qwen3MoeConfig

        dense = [i for i in range(cfg.n_layers) if not is_moe_layer(cfg, i)]
        return Qwen3MoeConfig(
            **common,
            intermediate_size=cfg.dense_hidden,
            moe_intermediate_size=cfg.moe.expert_hidden,
            num_experts=cfg.moe.num_experts,
            norm_topk_prob=cfg.moe.renormalize,
            decoder_sparse_step=1,
            mlp_only_layers=dense,
        )
    from transformers import MixtralConfig

    return MixtralConfig(
        **common, intermediate_size=cfg.moe.expert_hidden, num_local_experts=cfg.moe.num_experts
    )


def hf_state_dict(model: MoETransformer, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Every tensor under its ``transformers`` name, as independent contiguous copies in
    ``dtype`` (safetensors refuses tensors that share storage, as expert slices would).
    Tied embeddings are stored once, as ``model.embed_tokens.weight``."""
    arch = choose_architecture(model.cfg)
    named = {
        "model.embed_tokens.weight": model.embed.weight,
        "model.norm.weight": model.norm.weight,
    }
    if not model.cfg.tie_embeddings:
        named["lm_head.weight"] = model.lm_head.weight
    for i, block in enumerate(model.blocks):
        prefix = f"model.layers.{i}."
        named[prefix + "input_layernorm.weight"] = block.attn_norm.weight
        named[prefix + "post_attention_layernorm.weight"] = block.ffn_norm.weight
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            named[f"{prefix}self_attn.{proj}.weight"] = getattr(block.attn, proj).weight
        if model.cfg.qk_norm:
            named[prefix + "self_attn.q_norm.weight"] = block.attn.q_norm.weight
            named[prefix + "self_attn.k_norm.weight"] = block.attn.k_norm.weight
        if isinstance(block.ffn, MoELayer):
            named.update(_moe_tensors(arch, prefix + arch.moe_module, block.ffn))
        else:
            named.update(_dense_tensors(prefix + "mlp", block.ffn))
    return {k: v.detach().to(dtype=dtype, copy=True).contiguous() for k, v in named.items()}


def _moe_tensors(arch: Architecture, prefix: str, layer: MoELayer) -> dict[str, torch.Tensor]:
    gate, up, down = arch.expert_names
    out = {f"{prefix}.gate.weight": layer.router.weight}
    experts = layer.experts
    for e in range(layer.cfg.num_experts):
        gate_FD, up_FD = experts.w13[e].chunk(2)  # w13[e] = [W1; W3] (2F, D)
        out[f"{prefix}.experts.{e}.{gate}.weight"] = gate_FD
        out[f"{prefix}.experts.{e}.{up}.weight"] = up_FD
        out[f"{prefix}.experts.{e}.{down}.weight"] = experts.w2[e]  # (D, F)
    return out


def _dense_tensors(prefix: str, mlp: MLP) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.gate_proj.weight": mlp.w1.weight,
        f"{prefix}.up_proj.weight": mlp.w3.weight,
        f"{prefix}.down_proj.weight": mlp.w2.weight,
    }
