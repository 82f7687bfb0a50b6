"""The trivial baselines: each rule on hand-made items, the answer prior's fitting, and the
flat keys the evaluate stage writes."""

from __future__ import annotations

import pytest

from evaluation import baselines as b

TRACK = {
    "context": "Mia, Tom and Ana were playing in the park. Tom found a red kite. Ana found a "
    "blue ball. Tom gave the kite to Mia. Ana threw the ball to Tom. Ana hugged Tom.",
    "question": "Now the kite is with",
    "choices": ["Ana", "Mia", "Tom"],
    "answer": 1,
    "tier": "hand-overs 1",
}
COUNT = {
    "context": "Kemi and Mia were in the attic. Kemi had three horns. Mia had six horns. Kemi "
    "found two more horns. Mia gave one horn to Kemi.",
    "question": "Now Kemi has",
    "choices": ["seven", "five", "six", "four"],
    "answer": 2,
    "tier": "operations 2",
}


@pytest.mark.parametrize(
    "rule,item,expected",
    [
        (b.first_choice, TRACK, 0),
        (b.last_choice, TRACK, 2),
        (b.first_mentioned, TRACK, 1),  # Mia is named first
        (b.last_mentioned, TRACK, 2),  # ... Ana hugged Tom.
        (b.most_mentioned, TRACK, 2),  # Tom: 5 times
        (b.finder, TRACK, 2),  # Tom found a red kite
        (b.last_recipient, TRACK, 2),  # the ball to Tom
        (b.opening_count, COUNT, None),  # "three" is not a choice: abstain
        (b.last_number, COUNT, None),  # "one"
        (b.most_frequent_number, COUNT, None),  # every number once: a tie
        (b.BY_TASK["counting"]["smallest_choice"], COUNT, 3),
        (b.BY_TASK["counting"]["largest_choice"], COUNT, 0),
    ],
)
def test_rules_on_hand_made_items(rule, item, expected):
    assert rule(item) == expected


def test_abstaining_scores_chance_and_accuracy_counts_hits():
    score = b.accuracy(b.opening_count, [COUNT, COUNT])
    assert score.accuracy == pytest.approx(0.25)
    assert b.accuracy(b.first_mentioned, [TRACK]).accuracy == 1.0


def test_answer_prior_is_fitted_on_dev_and_cross_fitted_on_dev_itself():
    dev = [{"choices": ["a", "b"], "answer": 0, "tier": "t"}] * 4
    test = [{"choices": ["b", "a"], "answer": 1, "tier": "t"}] * 2
    assert b.accuracy(b.answer_prior(dev), test).accuracy == 1.0  # "a" is the usual answer
    by_name = {s.name: s.accuracy for s in b.rule_baselines("agreement", dev, None)}
    assert by_name["answer_prior"] == 1.0  # each half's prior says "a"
    unique = [{"choices": [f"x{i}", f"y{i}"], "answer": 0, "tier": "t"} for i in range(6)]
    by_name = {s.name: s.accuracy for s in b.rule_baselines("agreement", unique, None)}
    assert by_name["answer_prior"] == 0.5  # never seen answers: abstains, chance


def test_flat_keys_and_the_margin_over_the_strongest():
    items = [TRACK] * 10
    scores = {"entity_cloze/test/acc": 0.9, "entity_cloze/test/acc_stderr": 0.05}
    unigram = {"entity_cloze/test/acc": 0.4}
    out = b.baseline_metrics("entity_cloze", "test", items, items, scores, unigram)
    assert out["entity_cloze/test/baseline/unigram_lm"] == 0.4
    assert out["entity_cloze/test/baseline/first_mentioned"] == 1.0
    assert out["entity_cloze/test/baseline_best"] == 1.0
    assert out["entity_cloze/test/above_baseline_stderr"] == pytest.approx(-2.0)
    name, best = b.strongest(out, "entity_cloze", "test")
    assert best == 1.0 and out[f"entity_cloze/test/baseline/{name}"] == 1.0


def test_a_zero_model_stderr_falls_back_to_the_baselines_binomial_stderr():
    """A model scoring 0 on a few items has stderr 0; the margin is still defined (and
    negative), measured in the binomial stderr at the strongest baseline's accuracy."""
    items = [{"choices": ["a", "b"], "answer": i % 2, "tier": "t"} for i in range(16)]
    scores = {"agreement/test/acc": 0.0, "agreement/test/acc_stderr": 0.0}
    out = b.baseline_metrics("agreement", "test", items, items, scores, {"agreement/test/acc": 0.5})
    best = out["agreement/test/baseline_best"]
    assert 0 < best < 1
    expected = -best / (best * (1 - best) / 16) ** 0.5
    assert out["agreement/test/above_baseline_stderr"] == pytest.approx(expected)
