"""Router saturation through real models: a model compared with itself is saturated; a copy
whose experts are relabelled (router rows and expert weights permuted together, so it computes
the same function) has exactly the overlap the relabelling predicts; the stage's analysis reads
snapshots the way train writes them."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from evaluation.routing import RoutingWindows, analyse_routing
from evaluation.routing_domains import TokenDomains
from evaluation.routing_saturation import RouterSaturation
from pipeline.config import EvaluateConfig, ModelConfig
from pipeline.data.word_categories import WordCategories
from pipeline.errors import PipelineError
from pipeline.model import MoETransformer
from pipeline.model_io import model_identity, save_model
from pipeline.paths import Paths

VOCAB = 64
CPU = torch.device("cpu")
SWAP_0_1 = [1, 0, 2, 3]  # expert e of the copy is expert SWAP_0_1[e] of the original
SPEC = {
    "d_model": 32,
    "n_layers": 2,
    "n_heads": 2,
    "n_kv_heads": 1,
    "dense_hidden": 64,
    "max_seq_len": 16,
    "init_std": 0.2,  # peaky routing: no near-ties between experts
    "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
}


@pytest.fixture(scope="module")
def model() -> MoETransformer:
    torch.manual_seed(1)
    return MoETransformer(ModelConfig.model_validate(SPEC), VOCAB).eval()


@pytest.fixture(scope="module")
def windows() -> RoutingWindows:
    tokens = np.random.default_rng(0).integers(1, VOCAB, 300)
    tokens[::25] = 0  # an end-of-text token every 25 tokens
    return RoutingWindows(tokens, 16, 250, 4, CPU)


def relabelled(model: MoETransformer, permutation: list[int]) -> MoETransformer:
    """The same function with its experts renumbered: a token the original sends to expert
    ``p[e]`` the copy sends to ``e``."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        for layer in other.moe_layers():
            for weight in [layer.router.weight, *layer.experts.parameters()]:
                weight.copy_(weight[permutation])  # every expert tensor is (E, ...)
    return other


def test_a_model_is_saturated_with_itself(model, windows):
    trace = windows.trace(model)
    report = RouterSaturation.from_traces(trace, {0.5: windows.trace(model)})
    assert report.values == {0.5: [1.0, 1.0]}


def test_relabelled_experts_lower_saturation_by_exactly_the_moved_tokens(model, windows):
    final = windows.trace(model)
    swapped = relabelled(model, SWAP_0_1)
    same = windows.trace(swapped)
    torch.testing.assert_close(
        swapped(torch.as_tensor(windows.tokens[None, :16])).logits,
        model(torch.as_tensor(windows.tokens[None, :16])).logits,
    )  # the same function: only the labels differ
    report = RouterSaturation.from_traces(final, {0.5: same})
    for layer, ids_NK in enumerate(final.expert_ids):
        # A token keeps both experts when it chose both of {0, 1} or neither, one of its two
        # otherwise.
        either = np.isin(ids_NK, [0, 1]).sum(1)
        expected = np.where(either == 1, 0.5, 1.0).mean()
        assert 0.5 < expected < 1.0  # the test bites: some tokens do move
        assert report.values[0.5][layer] == expected


def analyse(
    model, windows, paths: Paths, domains: TokenDomains, snapshot_tokens: int = 8192
) -> dict[str, float]:
    """The stage's analyses with the snapshots under ``paths``, no word categories."""
    return analyse_routing(
        model,
        windows,
        EvaluateConfig(routing_snapshot_tokens=snapshot_tokens),
        snapshots=paths.snapshots(),
        tok_bytes=[b"x"] * VOCAB,
        words=WordCategories(re.compile(r"\w+"), {}),
        domains=domains,
        out_dir=paths.root / "plots",
    )


def test_the_analysis_reads_snapshots_as_train_writes_them(model, windows, tmp_path):
    paths = Paths(root=tmp_path)
    identity = model_identity(model.cfg, VOCAB)
    save_model(relabelled(model, SWAP_0_1), identity, paths.snapshot_files(0.1))
    save_model(model, identity, paths.snapshot_files(0.5))
    metrics = analyse(model, windows, paths, TokenDomains(("a", "b"), np.repeat([0, 1], 150)))
    assert sorted(paths.snapshots()) == [0.1, 0.5]
    assert metrics["routing/saturation/tokens"] == 250  # all the final model routed
    assert metrics["routing/saturation/at_50pct"] == 1.0
    assert 0.5 < metrics["routing/saturation/at_10pct"] < 1.0
    assert metrics["routing/domains"] == 2
    plots = tmp_path / "plots"
    assert (plots / "saturation" / "saturation.png").is_file()
    assert sorted(p.name for p in (plots / "domains").iterdir()) == [
        "domains.csv", "layer0.png", "layer1.png",
    ]  # fmt: skip


def test_snapshots_route_fewer_tokens_when_told(model, windows, tmp_path):
    paths = Paths(root=tmp_path)
    save_model(model, model_identity(model.cfg, VOCAB), paths.snapshot_files(0.5))
    domains = TokenDomains(("a",), np.zeros(300, dtype=np.int64))
    metrics = analyse(model, windows, paths, domains, snapshot_tokens=64)
    assert metrics["routing/saturation/tokens"] == 64
    assert metrics["routing/tokens"] == 250
    assert metrics["routing/saturation/at_50pct"] == 1.0


def test_a_snapshot_of_another_model_is_refused(model, windows, tmp_path):
    paths = Paths(root=tmp_path)
    other = MoETransformer(ModelConfig.model_validate({**SPEC, "d_model": 16}), VOCAB)
    save_model(other, model_identity(other.cfg, VOCAB), paths.snapshot_files(0.5))
    with pytest.raises(PipelineError, match=r"50pct/model_config.json: the snapshot is not"):
        analyse(model, windows, paths, TokenDomains(("a",), np.zeros(300, dtype=np.int64)))
