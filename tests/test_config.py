"""The params schema: every kind of bad value is refused with the key, the value and the rule."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, Params, flatten_keys, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def default_data() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def with_value(data: dict, dotted: str, value) -> dict:
    data = copy.deepcopy(data)
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert isinstance(params, Params)
    assert params.prepare.source == "synthetic"


@pytest.mark.parametrize(
    "preset", sorted((REPO / "examples").rglob("*.yaml")), ids=lambda p: p.name
)
def test_example_presets_are_valid_params(default_data, preset, merge_params):
    """Every params file under examples/ is valid once merged into params.yaml (as ``dvc exp run
    -S`` would apply it; the expert-parallel ones need a multiple of their EP in experts)."""
    merged = merge_params(default_data, yaml.safe_load(preset.read_text()))
    merged["train"]["model"]["moe"]["num_experts"] = 16
    parse_params(merged, source=str(preset))


def test_unknown_key_names_the_key(default_data):
    with pytest.raises(ConfigError, match=r"unknown key 'tokenize.vocab_sise'"):
        parse_params(with_value(default_data, "tokenize.vocab_sise", 100))


def test_wrong_type_names_key_value_and_type(default_data):
    with pytest.raises(ConfigError) as info:
        parse_params(with_value(default_data, "tokenize.vocab_size", "big"))
    message = str(info.value)
    assert "tokenize.vocab_size = 'big'" in message and "integer" in message


def test_out_of_range_names_the_bound(default_data):
    with pytest.raises(
        ConfigError, match=r"prepare.split.validation = 0.7: expected .*less than 0.5"
    ):
        parse_params(with_value(default_data, "prepare.split.validation", 0.7))


def test_bool_is_not_an_int(default_data):
    with pytest.raises(ConfigError, match="seed = True"):
        parse_params(with_value(default_data, "seed", True))


def test_top_k_above_experts_is_refused(default_data):
    data = with_value(default_data, "train.model.moe.top_k", 9)
    data = with_value(data, "train.model.moe.num_experts", 8)
    with pytest.raises(ConfigError, match=r"top_k = 9 exceeds train.model.moe.num_experts = 8"):
        parse_params(data)


def test_vocab_too_large_for_uint16_needs_the_switch(default_data):
    big = with_value(default_data, "tokenize.vocab_size", 100_000)
    with pytest.raises(ConfigError, match=r"does not fit in uint16.*token_dtype: uint32"):
        parse_params(big)
    assert (
        parse_params(with_value(big, "tokenize.token_dtype", "uint32")).tokenize.vocab_size
        == 100_000
    )


def test_source_needs_its_settings(default_data):
    with pytest.raises(ConfigError, match=r"prepare.hf.name is not set"):
        parse_params(with_value(default_data, "prepare.source", "hf"))


def test_every_error_is_listed(default_data):
    data = with_value(default_data, "seed", -1)
    data = with_value(data, "tokenize.min_frequency", 0)
    with pytest.raises(ConfigError) as info:
        parse_params(data)
    assert "seed = -1" in str(info.value) and "tokenize.min_frequency = 0" in str(info.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_params(bad)


def test_flatten_keys():
    assert flatten_keys({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [1, 2],
        "e": None,
    }
