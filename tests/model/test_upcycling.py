"""Sparse upcycling (pipeline/model/upcycling.py): what the upcycled model computes at step 0,
drop-upcycling's redrawn units, and the refusals of a dense model that does not fit."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import InitConfig, ModelConfig
from pipeline.model import MLP, MoELayer, MoETransformer
from pipeline.model.upcycling import UpcyclingError, upcycle_into

VOCAB = 64
HIDDEN = 48
# init_std 0.1 rather than 0.02: the MLPs then move the logits by O(0.1), so a broken copy shows.
BASE = {"d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "dense_hidden": HIDDEN,
        "max_seq_len": 16, "init_std": 0.1}  # fmt: skip
MOE = {"num_experts": 4, "top_k": 2, "expert_hidden": HIDDEN}
# fp32: the experts' grouped GEMMs sum in another order than nn.Linear, and renormalised
# weights sum to 1 within a few ulps; the differences are ~1e-6 of the O(1) logits.
FP32 = {"rtol": 1e-5, "atol": 1e-5}


def spec(moe: dict | None = None, **model) -> ModelConfig:
    return ModelConfig.model_validate({**BASE, **model, "moe": {**MOE, **(moe or {})}})


def build(cfg: ModelConfig, seed: int, vocab: int = VOCAB) -> MoETransformer:
    torch.manual_seed(seed)
    return MoETransformer(cfg, vocab).eval()


def dense_model(**model) -> MoETransformer:
    """Every layer dense (first_dense_layers = n_layers): the model the train stage trains."""
    return build(spec(first_dense_layers=BASE["n_layers"], **model), seed=1)


def upcycled(cfg: ModelConfig, dense: MoETransformer, seed: int = 7, **init) -> MoETransformer:
    model = build(cfg, seed=2)
    upcycle_into(model, dense, InitConfig(upcycle_from="dense", **init), seed, "dense")
    return model


def tokens(seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (3, 16), generator=torch.Generator().manual_seed(seed))


def layer_input(seed: int = 3) -> torch.Tensor:
    return torch.randn(2, 8, BASE["d_model"], generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "cfg",
    [
        spec(),
        spec(moe={"router": "sigmoid_bias"}),
        spec(first_dense_layers=1),  # layer 0 stays dense: the MLP as is
        spec(moe={"num_experts": 8, "top_k": 3}),
    ],
    ids=["softmax-top2", "sigmoid-top2", "first-layer-dense", "8-experts-top3"],
)
@pytest.mark.parametrize("router_init", ["normal", "zeros"])
def test_copy_with_renormalised_top_k_computes_the_dense_models_function(cfg, router_init):
    """Every expert is the dense MLP and the top-k weights sum to 1: each MoE layer outputs
    ``Σ_k w_k · MLP(x) = MLP(x)``, so the logits are the dense model's on any batch."""
    dense = dense_model()
    model = upcycled(cfg, dense, router_init=router_init)
    scratch = build(cfg, seed=2)
    for seed in range(3):
        idx = tokens(seed)
        torch.testing.assert_close(model(idx).logits, dense(idx).logits, **FP32)
        assert not torch.allclose(scratch(idx).logits, dense(idx).logits, **FP32)
    router = model.moe_layers()[0].router.weight
    assert (router == 0).all() == (router_init == "zeros")


def test_a_moe_model_of_one_expert_upcycles_like_a_dense_one():
    """The dense model may also be MoE layers of one expert (its router is ignored)."""
    one_expert = build(spec(moe={"num_experts": 1, "top_k": 1}), seed=1)
    model = upcycled(spec(), one_expert)
    idx = tokens(0)
    torch.testing.assert_close(model(idx).logits, one_expert(idx).logits, **FP32)


def test_without_renormalisation_a_layer_scales_the_mlp_by_its_top_k_mass():
    """Not the dense function: each token's output is its top-k probability mass (< 1) times
    the dense MLP's, so the logits differ; what is preserved is the experts' function."""
    dense = dense_model()
    model = upcycled(spec(moe={"renormalize": False}), dense)
    layer, mlp = model.blocks[0].ffn, dense.blocks[0].ffn
    x_BLD = layer_input()
    y_BLD, _, _ = layer(x_BLD)
    mass_T = layer.router(x_BLD.reshape(-1, BASE["d_model"])).weights_TK.sum(-1)
    assert (mass_T < 0.99).all()
    torch.testing.assert_close(y_BLD, mass_T.view(2, 8, 1) * mlp(x_BLD), **FP32)
    assert not torch.allclose(model(tokens(0)).logits, dense(tokens(0)).logits, **FP32)


@pytest.mark.parametrize("shared", [1, 2])
def test_shared_experts_add_one_dense_mlp_each(shared):
    """Each shared expert is a copy of the dense MLP too: with renormalised top-k a layer
    outputs ``(1 + num_shared_experts) · MLP(x)`` (not the dense function)."""
    dense = dense_model()
    model = upcycled(spec(moe={"num_shared_experts": shared}), dense)
    layer, mlp = model.blocks[1].ffn, dense.blocks[1].ffn
    x_BLD = layer_input()
    torch.testing.assert_close(layer(x_BLD)[0], (1 + shared) * mlp(x_BLD), **FP32)
    assert not torch.allclose(model(tokens(0)).logits, dense(tokens(0)).logits, **FP32)


def test_attention_norms_and_embeddings_are_the_dense_models():
    dense = dense_model()
    model = upcycled(spec(), dense)
    theirs = dense.state_dict()
    copied = [k for k in model.state_dict() if ".ffn." not in k]
    assert "blocks.1.attn.k_proj.weight" in copied and "embed.weight" in copied
    assert all(torch.equal(model.state_dict()[k], theirs[k]) for k in copied)


# --------------------------------------------------------------------------- drop
def experts_of(model: MoETransformer, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    experts = model.blocks[layer].ffn.experts
    return experts.w13.detach(), experts.w2.detach()


def redrawn_units(model: MoETransformer, dense: MoETransformer, layer: int) -> list[set[int]]:
    """Per expert, the hidden units whose gate row, up row or down column is not the dense
    MLP's; asserts that the three agree (a unit is redrawn whole)."""
    w13_E2FD, w2_EDF = experts_of(model, layer)
    mlp = dense.blocks[layer].ffn
    units = []
    for e in range(w2_EDF.shape[0]):
        gate = (w13_E2FD[e, :HIDDEN] != mlp.w1.weight).any(dim=1)
        up = (w13_E2FD[e, HIDDEN:] != mlp.w3.weight).any(dim=1)
        down = (w2_EDF[e] != mlp.w2.weight).any(dim=0)
        assert torch.equal(gate, up) and torch.equal(gate, down)
        units.append(set(gate.nonzero().flatten().tolist()))
    return units


@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_drop_redraws_exactly_the_stated_share_of_each_experts_units(ratio):
    dense = dense_model()
    model = upcycled(spec(), dense, method="drop", drop_ratio=ratio)
    for layer in range(2):
        units = redrawn_units(model, dense, layer)
        assert [len(u) for u in units] == [round(ratio * HIDDEN)] * 4
        assert len({frozenset(u) for u in units}) == 4, "each expert redraws its own units"
    # Different experts differ, in their redrawn values as well as where they are.
    w13_E2FD, _ = experts_of(model, 0)
    assert all(not torch.equal(w13_E2FD[0], w13_E2FD[e]) for e in (1, 2, 3))


def test_drop_is_deterministic_for_the_run_seed():
    dense = dense_model()
    first, again = (upcycled(spec(), dense, seed=7, method="drop") for _ in range(2))
    other_seed = upcycled(spec(), dense, seed=8, method="drop")
    for a, b in zip(experts_of(first, 1), experts_of(again, 1), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(experts_of(first, 1)[0], experts_of(other_seed, 1)[0])


def test_drop_keeps_the_dense_weights_statistics():
    """Redrawn units come from a normal with the dense matrix's mean and std (the paper's
    choice), not from the scratch init: the redrawn part's std is the dense matrix's."""
    dense = dense_model(init_std=0.3)
    model = upcycled(spec(), dense, method="drop", drop_ratio=1.0)
    w13_E2FD, _ = experts_of(model, 0)
    dense_std = dense.blocks[0].ffn.w1.weight.std().item()
    # 4 experts x 48 x 32 draws: the sample std is within 3% of the true one.
    assert w13_E2FD[:, :HIDDEN].std().item() == pytest.approx(dense_std, rel=0.03)


# --------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("dense_kwargs", "cfg", "vocab", "message"),
    [
        ({}, spec(n_heads=4), VOCAB, r"train\.model\.n_heads = 4, but the dense model has 2"),
        ({}, spec(), VOCAB + 1, r"embed\.weight is \(64, 32\) in the dense model but \(65, 32\)"),
        ({"d_model": 16}, spec(), VOCAB, r"embed\.weight is \(64, 16\) in the dense model but \(64, 32\)"),
        ({}, spec(moe={"expert_hidden": 24}), VOCAB,
         r"blocks\.0\.ffn\.experts\.w13 is \(4, 48, 32\) in the MoE model, but copies of the "
         r"dense model's MLP \(hidden size 48\) give \(4, 96, 32\).*fine-grained"),
        ({}, spec(first_dense_layers=1, dense_hidden=24), VOCAB,
         r"blocks\.0\.ffn\.w1\.weight is \(24, 32\) in the MoE model, but copies .* give \(48, 32\)"),
        (None, spec(), VOCAB, r"layer 0 of the dense model is a MoE layer of 4 experts"),
    ],
    ids=["architecture", "vocabulary", "d-model", "fine-grained", "dense-layer-hidden", "not-dense"],
)  # fmt: skip
def test_a_dense_model_that_does_not_fit_is_refused_naming_what_differs(
    dense_kwargs, cfg, vocab, message
):
    """Refused before any weight changes: the model keeps its own initialisation."""
    dense = dense_model(**dense_kwargs) if dense_kwargs is not None else build(spec(), seed=1)
    model = build(cfg, seed=2, vocab=vocab)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UpcyclingError, match=message):
        upcycle_into(model, dense, InitConfig(upcycle_from="dense"), 0, "dense")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_the_dense_layers_of_the_moe_model_get_the_mlp_as_is():
    dense = dense_model()
    model = upcycled(spec(first_dense_layers=1), dense, method="drop")
    assert isinstance(model.blocks[0].ffn, MLP) and isinstance(model.blocks[1].ffn, MoELayer)
    for name in ("w1", "w2", "w3"):
        theirs = getattr(dense.blocks[0].ffn, name).weight
        assert torch.equal(getattr(model.blocks[0].ffn, name).weight, theirs)
