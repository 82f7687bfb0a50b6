"""The OLMoE-style routing analyses on routings written by hand, where every number is known:
co-activation, domain and vocabulary specialisation, saturation, and the domain of each token."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evaluation.routing_coactivation import CoActivation
from evaluation.routing_domains import DomainRouting, TokenDomains, token_domains
from evaluation.routing_saturation import RouterSaturation, saturation
from evaluation.routing_trace import RoutingTrace
from evaluation.routing_vocabulary import VocabularyRouting, display_token
from pipeline.errors import PipelineError


def trace_of(*layers, token_ids=None, num_experts=4) -> RoutingTrace:
    """A trace whose MoE layers routed token ``n`` to the experts ``layer[n]``."""
    n = len(layers[0])
    return RoutingTrace(
        positions_N=np.arange(n),
        token_ids_N=np.asarray(token_ids if token_ids is not None else [0] * n),
        expert_ids=[np.asarray(ids, dtype=np.int64) for ids in layers],
        num_experts=num_experts,
        entropy=[0.0] * len(layers),
        dropped=[0.0] * len(layers),
    )


def rows(path):
    with open(path) as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- co-activation
def test_coactivation_of_a_fixed_routing(tmp_path):
    # expert 0 is chosen 3 times, twice with 1 and once with 2; expert 3 once, with 1
    report = CoActivation.from_trace(trace_of([[0, 1], [0, 1], [0, 2], [3, 1]]))
    p = report.conditional(0)
    nan = np.nan
    expected = [
        [nan, 2 / 3, 1 / 3, 0],
        [2 / 3, nan, 0, 1 / 3],
        [1, 0, nan, 0],
        [0, 1, 0, nan],
    ]
    np.testing.assert_allclose(p, expected)  # exact fractions: no tolerance beyond float's
    assert np.allclose(np.nansum(p, 1), 1.0)  # each row sums to k - 1
    assert report.metrics() == {"routing/layer0/coactivation/max": 1.0}
    report.write(tmp_path)
    table = {(r["expert"], r["other"]): r for r in rows(tmp_path / "coactivation.csv")}
    assert len(table) == 4 * 3  # off-diagonal pairs only
    assert table["0", "1"]["tokens_both"] == "2" and table["0", "1"]["tokens_expert"] == "3"
    assert (tmp_path / "layer0.png").read_bytes().startswith(b"\x89PNG")


def test_an_expert_nobody_chose_has_no_coactivation():
    p = CoActivation.from_trace(trace_of([[0, 1], [1, 2]])).conditional(0)
    assert np.isnan(p[3]).all()  # expert 3: undefined, not 0
    assert p[0, 1] == 1.0 and p[1, 0] == 0.5 and p[1, 2] == 0.5 and p[2, 1] == 1.0


# --------------------------------------------------------------------------- saturation
def test_saturation_counts_the_final_experts_already_chosen():
    final = np.array([[0, 1], [2, 3], [1, 2]])
    assert saturation(final, final) == 1.0
    assert saturation(final, final[:, ::-1]) == 1.0  # the order of the k slots is no matter
    # token 0: both kept; token 1: one of two; token 2: none
    assert saturation(final, np.array([[1, 0], [2, 0], [0, 3]])) == pytest.approx(0.5)
    assert saturation(final, np.array([[0, -1], [2, 3], [1, 2]])) == pytest.approx(5 / 6)


def test_saturation_metrics_and_files(tmp_path):
    final = trace_of([[0, 1], [2, 3]], [[0, 1], [0, 1]])
    earlier = {
        0.5: trace_of([[0, 1], [2, 0]], [[0, 1], [0, 1]]),
        0.25: trace_of([[2, 3], [0, 1]], [[0, 2], [0, 2]]),
    }
    report = RouterSaturation.from_traces(final, earlier)
    assert report.metrics() == {
        "routing/saturation/tokens": 2,
        "routing/layer0/saturation/at_25pct": 0.0,
        "routing/layer1/saturation/at_25pct": 0.5,
        "routing/saturation/at_25pct": 0.25,
        "routing/layer0/saturation/at_50pct": 0.75,
        "routing/layer1/saturation/at_50pct": 1.0,
        "routing/saturation/at_50pct": 0.875,
    }
    report.write(tmp_path)
    assert [r["fraction"] for r in rows(tmp_path / "saturation.csv")] == ["0.25"] * 2 + ["0.5"] * 2
    assert (tmp_path / "saturation.png").read_bytes().startswith(b"\x89PNG")


def test_a_snapshot_is_compared_on_the_tokens_it_routed():
    final = trace_of([[0, 1], [2, 3], [0, 2], [1, 3]])
    # the snapshot routed positions 2 and 0 (in that order) of the four
    earlier = RoutingTrace(
        np.array([2, 0]), np.zeros(2), [np.array([[0, 2], [0, 3]])], 4, [0.0], [0.0]
    )
    report = RouterSaturation.from_traces(final, {0.5: earlier})
    assert report.values == {0.5: [0.75]}  # position 2: both kept; position 0: one of two
    assert report.tokens == 2


def test_a_snapshot_of_other_tokens_is_refused():
    final = trace_of([[0, 1], [2, 3]])
    shifted = RoutingTrace(np.arange(1, 3), final.token_ids_N, final.expert_ids, 4, [0.0], [0.0])
    with pytest.raises(PipelineError, match="re-run the train stage"):
        RouterSaturation.from_traces(final, {0.5: shifted})


# --------------------------------------------------------------------------- domains
def write_split(path, texts, domains=None):
    columns = {"text": texts} | ({"domain": domains} if domains is not None else {})
    pq.write_table(pa.table(columns), path)


def test_each_token_gets_its_documents_domain(tmp_path):
    write_split(tmp_path / "test-00000.parquet", ["x", "y"], ["story", "counting"])
    write_split(tmp_path / "test-00001.parquet", ["z"], ["story"])
    tokens = np.array([5, 6, 0, 7, 0, 8, 9, 9, 0], dtype=np.uint16)  # 0: end of text
    files = sorted(tmp_path.glob("*.parquet"))
    domains = token_domains(files, tokens, eot_id=0)
    assert domains.names == ("counting", "story")  # sorted
    assert domains.of_token.tolist() == [1, 1, 1, 0, 0, 1, 1, 1, 1]


def test_a_split_without_domains_is_one_domain(tmp_path):
    write_split(tmp_path / "test.parquet", ["x", "y"])
    domains = token_domains([tmp_path / "test.parquet"], np.array([5, 0, 6, 0]), eot_id=0)
    assert domains.names == ("all",) and domains.of_token.tolist() == [0, 0, 0, 0]


def test_documents_and_end_of_text_tokens_must_agree(tmp_path):
    write_split(tmp_path / "test.parquet", ["x", "y"], ["a", "b"])
    with pytest.raises(PipelineError, match=r"2 documents, but their token file holds 3"):
        token_domains([tmp_path / "test.parquet"], np.array([5, 0, 0, 6, 0]), eot_id=0)


def test_domains_routed_to_their_own_experts(tmp_path):
    # 100 tokens of domain "a" always go to experts {0, 1}, 100 of "b" to {2, 3}
    ids = [[0, 1]] * 100 + [[2, 3]] * 100
    trace = trace_of(ids, ids)
    domains = TokenDomains(("a", "b", "unseen"), np.repeat([0, 1], 100))
    report = DomainRouting.from_trace(trace, domains)
    assert report.names == ("a", "b")  # only the domains among the analysed tokens
    np.testing.assert_array_equal(report.layers[0].shares(), [[1, 1, 0, 0], [0, 0, 1, 1]])
    metrics = report.metrics()
    assert metrics["routing/domains"] == 2
    assert metrics["routing/layer0/domain/top_share"] == 1.0
    # Shuffled labels: each domain's tokens are a random half of all tokens, so each expert
    # gets about half of them; 0.8 is over 6 standard deviations (0.035) above that.
    assert metrics["routing/layer0/domain/top_share_shuffled"] < 0.8
    report.write(tmp_path)
    table = rows(tmp_path / "domains.csv")
    row = next(r for r in table if r["layer"] == "1" and r["domain"] == "a" and r["expert"] == "0")
    assert row == {
        "layer": "1", "domain": "a", "domain_tokens": "100", "expert": "0",
        "routed_tokens": "100", "domain_share": "1.0", "expert_share": "1.0",
    }  # fmt: skip
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["layer0.png", "layer1.png"]


# --------------------------------------------------------------------------- vocabulary
def test_vocabulary_specialisation_of_fixed_routes(tmp_path):
    token_ids = [7] * 30 + [8] * 25 + [9] * 20 + [10] * 5
    ids = (
        [[0, 1]] * 30  # token 7: always experts 0 and 1 -> top expert 0 (tie: lower id), share 1
        + [[2, 3]] * 20
        + [[1, 3]] * 5  # token 8: expert 3 every time -> share 1
        + [[0, 2]] * 10
        + [[1, 3]] * 10  # token 9: each expert half the time -> share 0.5
        + [[0, 1]] * 5  # token 10: too rare
    )
    tok_bytes = [b""] * 7 + [b" the", b"\n", b"cat", b"dog"]
    report = VocabularyRouting.from_trace(
        trace_of(ids, token_ids=token_ids), tok_bytes, top=50, min_count=20
    )
    assert report.token_ids.tolist() == [7, 8, 9]  # most frequent first; token 10 too rare
    assert report.counts.tolist() == [30, 25, 20]
    assert report.texts == ["␣the", "\\n", "cat"]
    assert report.layers[0].top_expert_G.tolist() == [0, 3, 0]
    assert report.layers[0].top_share_G().tolist() == [1.0, 1.0, 0.5]
    metrics = report.metrics()
    assert metrics["routing/vocab/token_ids"] == 3
    assert metrics["routing/layer0/vocab/top_share"] == pytest.approx(2.5 / 3)
    report.write(tmp_path)
    table = rows(tmp_path / "vocabulary.csv")
    assert [(r["token_id"], r["token"], r["count"], r["top_expert"], r["top_share"])
            for r in table] == [("7", "␣the", "30", "0", "1.0"), ("8", "\\n", "25", "3", "1.0"),
                                ("9", "cat", "20", "0", "0.5")]  # fmt: skip
    assert (tmp_path / "vocabulary.png").read_bytes().startswith(b"\x89PNG")


def test_vocabulary_keeps_the_most_frequent_ids_only():
    token_ids = [1] * 3 + [2] * 5 + [3] * 4
    trace = trace_of([[0, 1]] * 12, token_ids=token_ids)
    report = VocabularyRouting.from_trace(trace, [b"a"] * 4, top=2, min_count=1)
    assert report.token_ids.tolist() == [2, 3]


def test_display_token():
    assert display_token(b"\tx y\r") == "\\tx␣y\\r"
    assert display_token(b"") == "<special>"
    assert display_token(b"\xe2\x82") == "\ufffd"  # half a character: shown, not an error
