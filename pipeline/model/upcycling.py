"""Sparse upcycling: an MoE model's initial weights from a dense model's (``train.init``).

Sparse upcycling (Komatsuzaki et al. 2022, arXiv:2212.05055) starts an MoE from a trained
dense model of the same architecture: attention, norms and embeddings are copied, and every
expert of a MoE layer is a copy of that layer's dense SwiGLU MLP. A layer the MoE model keeps
dense (``first_dense_layers``, ``moe_every``) gets the dense MLP as is; each shared expert is a
copy too. The routers keep their fresh initialisation (``router_init: normal``) or start at
zero (``zeros``: uniform scores). The dense model is any model the train stage wrote whose
feed-forward layers are dense: all layers dense (``first_dense_layers = n_layers``), or MoE
layers of one expert and no shared experts (the router is then ignored).

What is preserved at step 0 with ``method: copy``: each routed expert computes the dense MLP, so
a MoE layer outputs ``(Σ_k weights_k + num_shared_experts) · MLP(x)``. With renormalised top-k
weights and no shared experts that is ``MLP(x)``: the upcycled model computes the dense model's
function (``tests/model/test_upcycling.py``). Without renormalisation the factor is each token's
top-k probability mass; with shared experts it is at least 2.

Drop-upcycling (Nakamura et al. 2025, arXiv:2502.19261), ``method: drop``: identical copies get
identical gradients from the language-model loss, so the experts only drift apart through the
router. Drop re-initialises ``round(drop_ratio · F)`` hidden units of each routed expert, a
different random set per expert: unit ``f`` is row ``f`` of the gate and up projections
(``w13[e, f]``, ``w13[e, F + f]``) and column ``f`` of ``w2[e]``, redrawn from a normal with the
mean and standard deviation of the dense matrix it replaces (as the paper does). Each expert's
draw has its own generator, seeded from the run seed, the layer and the expert, so the result is
the same for a seed whatever the order or layout.

Fine-grained upcycling (experts narrower than the dense MLP) is refused: a slice of the dense
MLP is not the dense function, and no rescaling keeps it so under arbitrary routing. Any other
difference (a tensor's shape, an architecture setting) is refused before training, naming it.

Shapes (``docs/ARCHITECTURE.md``): E experts, F hidden, D model dim.
"""

from __future__ import annotations

import hashlib

import torch

from pipeline.config import InitConfig
from pipeline.errors import PipelineError
from pipeline.model.layers import MLP
from pipeline.model.moe import MoELayer
from pipeline.model.transformer import MoETransformer

#: Settings that change what the copied weights mean without changing their shapes.
SAME_ARCHITECTURE = (
    "n_layers", "n_heads", "n_kv_heads", "qk_norm", "tie_embeddings", "rope_theta", "norm_eps",
)  # fmt: skip


class UpcyclingError(PipelineError):
    """The dense model cannot initialise this MoE model; the message names what differs."""


@torch.no_grad()
def upcycle_into(
    model: MoETransformer, dense: MoETransformer, init: InitConfig, seed: int, source: str
) -> None:
    """Overwrite ``model``'s weights with the upcycled ``dense`` model's (``source`` names it
    in errors). Everything is checked before the first weight changes."""
    _check_architecture(model, dense, source)
    state = model.state_dict()
    dense_state = dense.state_dict()
    extra = sorted(k for k in dense_state if not _is_feed_forward(k) and k not in state)
    if extra:
        raise UpcyclingError(
            f"{source}: the dense model holds {extra[0]}, which this MoE model has no place for "
            "(another architecture: compare its model_config.json with train.model)"
        )
    for key, tensor in state.items():
        if not _is_feed_forward(key):
            _check_shape(key, tensor, dense_state.get(key), source)
            state[key] = dense_state[key]
    for i, block in enumerate(model.blocks):
        w1_FD, w3_FD, w2_DF = dense_mlp(dense, i, source)
        state.update(_layer_state(block.ffn, f"blocks.{i}.ffn.", w1_FD, w3_FD, w2_DF, source))
        if isinstance(block.ffn, MoELayer):
            if init.router_init == "zeros":
                state[f"blocks.{i}.ffn.router.weight"] = torch.zeros_like(block.ffn.router.weight)
            if init.method == "drop":
                w13, w2 = (state[f"blocks.{i}.ffn.experts.{n}"] for n in ("w13", "w2"))
                drop_units_(w13, w2, init.drop_ratio, seed, layer=i)
    model.load_state_dict(state)


def dense_mlp(dense: MoETransformer, layer: int, source: str) -> tuple[torch.Tensor, ...]:
    """``(w1 (F, D), w3 (F, D), w2 (D, F))`` of the dense model's feed-forward ``layer``: a
    dense MLP, or a MoE layer of one expert without shared experts."""
    ffn = dense.blocks[layer].ffn
    if isinstance(ffn, MLP):
        return ffn.w1.weight, ffn.w3.weight, ffn.w2.weight
    moe = ffn.cfg
    if moe.num_experts != 1 or moe.num_shared_experts:
        raise UpcyclingError(
            f"{source}: layer {layer} of the dense model is a MoE layer of {moe.num_experts} "
            f"experts and {moe.num_shared_experts} shared experts, not a dense MLP; upcycle "
            "from a model whose layers are dense (first_dense_layers = n_layers) or MoE layers "
            "of one expert (moe.num_experts: 1, num_shared_experts: 0)"
        )
    w13_2FD, w2_DF = ffn.experts.w13[0], ffn.experts.w2[0]
    hidden = w2_DF.shape[1]
    return w13_2FD[:hidden], w13_2FD[hidden:], w2_DF


def _layer_state(ffn, prefix: str, w1_FD, w3_FD, w2_DF, source: str) -> dict[str, torch.Tensor]:
    """The feed-forward tensors of one layer of the MoE model, each checked against the shape
    the dense MLP gives it: the MLP itself for a dense layer; for a MoE layer every routed
    expert and every shared expert (blocks of ``F`` units of the shared MLP) a copy."""
    if isinstance(ffn, MLP):
        wanted = {"w1.weight": w1_FD, "w3.weight": w3_FD, "w2.weight": w2_DF}
    else:
        e, shared = ffn.cfg.num_experts, ffn.cfg.num_shared_experts
        wanted = {
            "experts.w13": torch.cat([w1_FD, w3_FD]).expand(e, -1, -1),
            "experts.w2": w2_DF.expand(e, -1, -1),
        }
        if shared:
            wanted |= {
                "shared.w1.weight": w1_FD.repeat(shared, 1),
                "shared.w3.weight": w3_FD.repeat(shared, 1),
                "shared.w2.weight": w2_DF.repeat(1, shared),
            }
    out = {}
    hidden = w2_DF.shape[1]
    for name, value in wanted.items():
        have = ffn.get_parameter(name)
        if have.shape != value.shape:
            raise UpcyclingError(
                f"{source}: {prefix}{name} is {tuple(have.shape)} in the MoE model, but copies "
                f"of the dense model's MLP (hidden size {hidden}) give {tuple(value.shape)}; "
                f"set train.model.dense_hidden and train.model.moe.expert_hidden to {hidden} "
                "(experts narrower than the dense MLP, fine-grained upcycling, are not supported)"
            )
        out[prefix + name] = value.clone(memory_format=torch.contiguous_format)
    return out


@torch.no_grad()
def drop_units_(w13_E2FD: torch.Tensor, w2_EDF: torch.Tensor, ratio: float, seed: int, layer: int) -> None:  # fmt: skip
    """Redraw ``round(ratio · F)`` hidden units of each expert, in place (module docstring)."""
    experts, hidden = w2_EDF.shape[0], w2_EDF.shape[2]
    count = round(ratio * hidden)
    # The dense matrices' statistics: every expert is still a copy of them here.
    gate_up_stats = [_mean_std(half) for half in (w13_E2FD[0, :hidden], w13_E2FD[0, hidden:])]
    down_stats = _mean_std(w2_EDF[0])
    for e in range(experts):
        gen = torch.Generator().manual_seed(expert_seed(seed, layer, e))
        units = torch.randperm(hidden, generator=gen)[:count]
        for offset, (mean, std) in zip((0, hidden), gate_up_stats, strict=True):
            drawn = _normal((count, w13_E2FD.shape[2]), mean, std, gen)
            w13_E2FD[e, offset + units] = drawn.to(w13_E2FD)
        drawn = _normal((w2_EDF.shape[1], count), *down_stats, gen)
        w2_EDF[e][:, units] = drawn.to(w2_EDF)


def expert_seed(seed: int, layer: int, expert: int) -> int:
    """A distinct 63-bit seed per (run seed, layer, expert), independent of draw order."""
    digest = hashlib.sha256(f"drop-upcycling/{seed}/{layer}/{expert}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _mean_std(w: torch.Tensor) -> tuple[float, float]:
    w = w.double()
    return w.mean().item(), w.std().item()


def _normal(shape: tuple[int, ...], mean: float, std: float, gen: torch.Generator) -> torch.Tensor:
    return torch.empty(shape, dtype=torch.float32).normal_(mean, std, generator=gen)


def _is_feed_forward(key: str) -> bool:
    return ".ffn." in key


def _check_shape(key: str, tensor: torch.Tensor, dense: torch.Tensor | None, source: str) -> None:
    if dense is None:
        raise UpcyclingError(
            f"{source}: the MoE model's {key} {tuple(tensor.shape)} has no counterpart in the "
            "dense model (another architecture: compare its model_config.json with train.model)"
        )
    if dense.shape != tensor.shape:
        raise UpcyclingError(
            f"{source}: {key} is {tuple(dense.shape)} in the dense model but "
            f"{tuple(tensor.shape)} in the MoE model (train.model: d_model, n_heads, "
            "n_kv_heads and the tokenizer's vocabulary must match the dense model's)"
        )


def _check_architecture(model: MoETransformer, dense: MoETransformer, source: str) -> None:
    for name in SAME_ARCHITECTURE:
        mine, theirs = getattr(model.cfg, name), getattr(dense.cfg, name)
        if mine != theirs:
            raise UpcyclingError(
                f"{source}: train.model.{name} = {mine!r}, but the dense model has {theirs!r}; "
                "upcycling copies its weights, so the architecture must match"
            )
