"""The Hugging Face export: every supported variant loads offline through the Auto classes with
no missing or unexpected key and gives the project's logits (fp32, 1e-5) and greedy tokens;
unsupported configs and damaged directories are refused with the parameter or file named."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.export.architectures import ExportError, choose_architecture
from pipeline.export.hf_dir import FILES, WEIGHTS, verify_export, write_export

from .conftest import tiny_config, tiny_model

# Logits go through ~3 layers of fp32 matmuls in a different order (HF's per-expert loop, its own
# RoPE tables in float32 rather than our float64-then-float32): agreement to ~1e-6 is expected.
ATOL = 1e-5

VARIANTS = {
    "qwen3_moe-tied": ({}, "Qwen3MoeForCausalLM"),
    "qwen3_moe-untied": ({"tie_embeddings": False}, "Qwen3MoeForCausalLM"),
    "qwen3_moe-dense-first-every-2": (
        {"n_layers": 4, "first_dense_layers": 1, "moe_every": 2},
        "Qwen3MoeForCausalLM",
    ),
    "qwen3_moe-switch-k1-no-renorm": (
        {"moe": {"top_k": 1, "renormalize": False}},
        "Qwen3MoeForCausalLM",
    ),
    "qwen3_moe-k3-no-renorm-mha": (
        {"n_kv_heads": 4, "moe": {"top_k": 3, "renormalize": False}},
        "Qwen3MoeForCausalLM",
    ),
    "qwen3_moe-expert-choice": ({"moe": {"router": "expert_choice"}}, "Qwen3MoeForCausalLM"),
    "mixtral-no-qk-norm": ({"qk_norm": False, "rope_theta": 500.0}, "MixtralForCausalLM"),
}


def export(tmp_path, tokenizer_dir, vocab_size, dtype="float32", **overrides):
    model = tiny_model(tiny_config(**overrides), vocab_size)
    out = tmp_path / "hf"
    write_export(model, tokenizer_dir, out, dtype)
    return model, out


def load_hf(out):
    hf, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    return hf.eval(), info


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_logits_equal_the_project_model(variant, tmp_path, tokenizer_dir, vocab_size):
    overrides, class_name = VARIANTS[variant]
    model, out = export(tmp_path, tokenizer_dir, vocab_size, **overrides)
    assert verify_export(out)["architectures"] == [class_name]
    hf, info = load_hf(out)
    assert type(hf).__name__ == class_name
    assert {k: v for k, v in info.items() if v} == {}, info  # no missing/unexpected/mismatched
    idx = torch.randint(
        0, vocab_size, (3, model.cfg.max_seq_len), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        ours, theirs = model(idx).logits, hf(idx).logits
    assert ours.dtype == theirs.dtype == torch.float32
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["qwen3_moe-dense-first-every-2", "mixtral-no-qk-norm"])
def test_greedy_generation_matches_the_project_generate(
    variant, tmp_path, tokenizer_dir, vocab_size
):
    model, out = export(tmp_path, tokenizer_dir, vocab_size, **VARIANTS[variant][0])
    hf, _ = load_hf(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = tokenizer("Once upon a time", return_tensors="pt").input_ids  # (1, P)
    new = model.cfg.max_seq_len - prompt.shape[1]  # stay inside the trained context
    ours = model.generate(prompt, new, temperature=0)[0, prompt.shape[1] :].tolist()
    theirs = hf.generate(prompt, max_new_tokens=new, do_sample=False)[0, prompt.shape[1] :]
    eot = tokenizer.eos_token_id
    # transformers stops at end-of-text, the project's generate does not: compare up to it.
    cut = ours.index(eot) + 1 if eot in ours else len(ours)
    assert theirs.tolist()[:cut] == ours[:cut] and len(theirs) >= cut


def test_tokenizer_loads_offline_and_encodes_like_the_pipeline(tmp_path, tokenizer_dir, vocab_size):
    model, out = export(tmp_path, tokenizer_dir, vocab_size)
    hf_tok = AutoTokenizer.from_pretrained(out)
    ours = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    text = 'Tom had 3 red apples. "Where is the ball?" asked Mia — ünïcödé.'
    assert hf_tok(text).input_ids == ours.encode(text, add_special_tokens=False).ids
    assert hf_tok.decode(hf_tok(text).input_ids) == text
    eot = ours.token_to_id("<|endoftext|>")
    assert hf_tok.eos_token_id == eot and hf_tok.model_max_length == model.cfg.max_seq_len
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == generation["pad_token_id"] == eot


def test_bfloat16_export_stores_the_rounded_weights(tmp_path, tokenizer_dir, vocab_size):
    model, out = export(tmp_path, tokenizer_dir, vocab_size, dtype="bfloat16")
    hf, info = load_hf(out)
    assert hf.dtype == torch.bfloat16 and not info["missing_keys"]
    expected = model.blocks[0].ffn.experts.w2[1].detach().to(torch.bfloat16)
    assert torch.equal(hf.model.layers[0].mlp.experts.down_proj[1], expected)


@pytest.mark.parametrize(
    ("overrides", "gate", "up"),
    [({}, "mlp.experts.{e}.gate_proj", "mlp.experts.{e}.up_proj"),
     ({"qk_norm": False}, "block_sparse_moe.experts.{e}.w1", "block_sparse_moe.experts.{e}.w3")],
    ids=["qwen3_moe", "mixtral"],
)  # fmt: skip
def test_stacked_w13_is_written_as_each_experts_gate_and_up_projection(
    overrides, gate, up, tmp_path, tokenizer_dir, vocab_size
):
    """The file holds one (F, D) tensor per expert and projection (the hub layout): the first
    half of ``w13[e]`` is expert e's gate projection, the second its up projection."""
    from safetensors.torch import load_file

    model, out = export(tmp_path, tokenizer_dir, vocab_size, **overrides)
    stored = load_file(out / WEIGHTS)
    w13_E2FD = model.blocks[0].ffn.experts.w13.detach()
    f = w13_E2FD.shape[1] // 2
    for e in range(w13_E2FD.shape[0]):
        prefix = "model.layers.0."
        assert torch.equal(stored[prefix + gate.format(e=e) + ".weight"], w13_E2FD[e, :f])
        assert torch.equal(stored[prefix + up.format(e=e) + ".weight"], w13_E2FD[e, f:])


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"moe": {"router": "sigmoid_bias"}}, r"train\.model\.moe\.router = 'sigmoid_bias'"),
        ({"moe": {"num_shared_experts": 1}}, r"train\.model\.moe\.num_shared_experts = 1"),
        (
            {"moe": {"n_groups": 2, "topk_groups": 1}},
            r"train\.model\.moe\.n_groups = 2 with topk_groups = 1: .*deepseek_v3 has n_group",
        ),
        (  # sigmoid + groups is deepseek_v3's routing, but not its attention: named as groups
            {"moe": {"router": "sigmoid_bias", "n_groups": 2, "topk_groups": 1}},
            r"train\.model\.moe\.n_groups = 2 .*MLA attention",
        ),
        (
            {"qk_norm": False, "first_dense_layers": 1, "moe": {"renormalize": False}},
            r"renormalize = False \(needs True\); train\.model\.first_dense_layers = 1",
        ),
        ({"qk_norm": False, "moe_every": 2}, r"train\.model\.moe_every = 2 \(needs 1\)"),
    ],
)
def test_inexpressible_configs_are_refused_naming_the_param(overrides, named):
    with pytest.raises(ExportError, match=named):
        choose_architecture(tiny_config(**overrides))


def test_refused_before_anything_is_written(tmp_path, tokenizer_dir, vocab_size):
    with pytest.raises(ExportError, match="sigmoid_bias"):
        export(tmp_path, tokenizer_dir, vocab_size, moe={"router": "sigmoid_bias"})
    assert not (tmp_path / "hf").exists()


def test_export_keeps_other_files_and_replaces_its_own(tmp_path, tokenizer_dir, vocab_size):
    _, out = export(tmp_path, tokenizer_dir, vocab_size)
    (out / "README.md").write_text("card")
    export(tmp_path, tokenizer_dir, vocab_size, tie_embeddings=False)
    assert (out / "README.md").read_text() == "card"
    assert not verify_export(out)["tie_word_embeddings"]
    assert [p.name for p in tmp_path.iterdir()] == ["hf"]  # no temporary directory left


def test_the_export_bytes_do_not_depend_on_the_hub_setting(
    tmp_path, tokenizer_dir, vocab_size, monkeypatch
):
    import huggingface_hub.constants

    exports = []
    for offline in (True, False):
        # HF_HUB_OFFLINE as huggingface_hub read it at import time, what transformers consults
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        exports.append(export(tmp_path / str(offline), tokenizer_dir, vocab_size)[1])
    for name in FILES:
        assert (exports[0] / name).read_bytes() == (exports[1] / name).read_bytes(), name


def damage_truncate(out):
    data = (out / WEIGHTS).read_bytes()
    (out / WEIGHTS).write_bytes(data[: len(data) // 2])


def damage_flip_a_weight_byte(out):
    data = bytearray((out / WEIGHTS).read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor's data, past the header
    (out / WEIGHTS).write_bytes(bytes(data))


def damage_edit_config(out):
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "num_experts_per_tok": 1}))


def damage_remove_tokenizer(out):
    (out / "tokenizer.json").unlink()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (damage_truncate, r"model\.safetensors: unreadable .*truncated or corrupted"),
        (damage_flip_a_weight_byte, r"\['model\.safetensors'\] differ from what the export"),
        (damage_edit_config, r"\['config\.json'\] differ from what the export wrote"),
        (damage_remove_tokenizer, r"missing \['tokenizer\.json'\]; re-run the export stage"),
    ],
)
def test_damaged_export_is_detected(damage, message, tmp_path, tokenizer_dir, vocab_size):
    _, out = export(tmp_path, tokenizer_dir, vocab_size)
    verify_export(out)
    damage(out)
    with pytest.raises(ExportError, match=message):
        verify_export(out)
