"""The benchmark item sets: dev and test disjoint and reproducible, contaminated candidates passed
over, every difficulty tier present, and the answer spread over the choice positions."""

from __future__ import annotations

from collections import Counter

import pytest

from pipeline.data.benchmark_sets import ITEM_SETS, item_text, read_items
from pipeline.data.synthetic.benchmarks import (
    TASKS,
    generate_benchmarks,
    write_benchmark_sets,
)
from pipeline.errors import PipelineError
from pipeline.paths import Paths

SIZES = {"dev": 120, "test": 240}


def clean(texts: list[str]) -> set[int]:
    return set()


@pytest.fixture(scope="module")
def generated():
    return generate_benchmarks(7, SIZES, clean)


def test_dev_and_test_are_disjoint_and_of_the_asked_size(generated):
    items, rejected = generated
    for task in TASKS:
        dev = {item_text(i) for i in items["dev"][task]}
        test = {item_text(i) for i in items["test"][task]}
        assert len(dev) == SIZES["dev"] and len(test) == SIZES["test"]  # no repeat inside a set
        assert not dev & test
        assert rejected[task] == {"dev": 0, "test": 0}


def test_same_seed_same_items_other_seed_other_items(generated):
    assert generate_benchmarks(7, SIZES, clean) == generated
    other, _ = generate_benchmarks(8, SIZES, clean)
    for split in ITEM_SETS:
        for task in TASKS:
            assert other[split][task] != generated[0][split][task]


def test_the_test_set_does_not_depend_on_the_dev_set_size(generated):
    """Independent streams: tuning with more dev items leaves the reported items alone, except
    where a test candidate would repeat a dev item (drawn again then)."""
    bigger, _ = generate_benchmarks(7, {"dev": 2 * SIZES["dev"], "test": SIZES["test"]}, clean)
    for task in TASKS:
        before = {item_text(i) for i in generated[0]["test"][task]}
        after = {item_text(i) for i in bigger["test"][task]}
        assert len(before ^ after) <= 0.05 * len(before)


def test_contaminated_candidates_are_passed_over_and_counted():
    def kite_is_dirty(texts: list[str]) -> set[int]:
        return {i for i, text in enumerate(texts) if "kite" in text}

    items, rejected = generate_benchmarks(7, SIZES, kite_is_dirty)
    for split in ITEM_SETS:
        for task in TASKS:
            assert len(items[split][task]) == SIZES[split]
            assert not any("kite" in item_text(i) for i in items[split][task])
    assert rejected["entity_cloze"]["test"] > 0  # kites are among the tracked objects


def test_every_tier_is_present_with_enough_items(generated):
    expected = {
        "agreement": 3,  # simple / across a PP / across a relative clause
        "entity_cloze": 3,  # hand-overs 0 / 1 / 2
        "counting": 3,  # operations 1 / 2 / 3
    }
    for task, n_tiers in expected.items():
        tiers = Counter(item["tier"] for item in generated[0]["test"][task])
        assert len(tiers) == n_tiers, tiers
        assert min(tiers.values()) >= 0.1 * SIZES["test"], tiers


def test_the_answer_is_spread_over_the_positions(generated):
    for task in TASKS:
        test = generated[0]["test"][task]
        positions = Counter(item["answer"] for item in test)
        n_choices = len(test[0]["choices"])
        # Uniform: each position holds 1/n of the answers, give or take 4 binomial stderr.
        stderr = (SIZES["test"] * (1 / n_choices) * (1 - 1 / n_choices)) ** 0.5
        for position in range(n_choices):
            assert abs(positions[position] - SIZES["test"] / n_choices) <= 4 * stderr


def test_written_sets_read_back_and_bad_lines_name_their_place(tmp_path):
    paths = Paths(root=tmp_path)
    stats = write_benchmark_sets(3, {"dev": 5, "test": 7}, paths, lambda: [])
    assert stats["counting"] == {
        "dev": {"items": 5, "rejected": 0},
        "test": {"items": 7, "rejected": 0},
    }
    items = read_items(paths.benchmark("counting", "test"))
    assert len(items) == 7 and all(0 <= i["answer"] < len(i["choices"]) for i in items)

    path = paths.benchmark("agreement", "dev")
    path.write_text(path.read_text() + '{"choices": ["a", "b"]}\n')
    with pytest.raises(
        PipelineError, match=r"agreement.jsonl:6: an item needs 'choices', 'answer'"
    ):
        read_items(path)
