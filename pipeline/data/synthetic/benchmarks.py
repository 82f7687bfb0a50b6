"""Held-out benchmark items with known answers: agreement, entity tracking, counting."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pipeline.data.synthetic.agreement import AGREEMENT_PHENOMENA, agreement_pair
from pipeline.data.synthetic.episodes import (
    counting_episode,
    holdings,
    tracking_episode,
    whereabouts,
)
from pipeline.data.synthetic.grammar import number_text, sentence

BENCHMARK_SEED_MULTIPLIER = 1_000_003

BENCHMARK_SEED_OFFSET = 7

MAX_COUNT = 20  # counting choices stay within the number words zero..twenty


def benchmark_rng(seed: int) -> random.Random:
    """The benchmark stream: a stable derivation of ``seed`` that the corpus never uses."""
    return random.Random(seed * BENCHMARK_SEED_MULTIPLIER + BENCHMARK_SEED_OFFSET)


def _agreement_items(rng: random.Random, n_items: int) -> list[dict]:
    items = []
    for i in range(n_items):
        phenomenon = AGREEMENT_PHENOMENA[i % len(AGREEMENT_PHENOMENA)]
        good, bad, _, _ = agreement_pair(rng, phenomenon, held_out=True)
        items.append({"sentence_good": good, "sentence_bad": bad, "phenomenon": phenomenon})
    return items


def _entity_cloze_item(rng: random.Random) -> dict:
    """A tracking episode; the question asks who holds the target object at the end."""
    st, target, _ = tracking_episode(rng)
    names = [c.name for c in st.cast]
    rng.shuffle(names)
    return {
        "context": st.text,
        "question": sentence(whereabouts(target)),
        "choices": names,
        "answer": names.index(st.holder[target]),
    }


def _counting_item(rng: random.Random) -> dict:
    """A counting episode; the question asks the chosen character's final count."""
    episode = counting_episode(rng)
    answer = episode.count[episode.asked.name]
    choices = _number_choices(rng, answer, sorted(episode.count.values()))
    return {
        "context": episode.story.text,
        "question": sentence(holdings(episode.asked.name)),
        "choices": [number_text(n, words=True) for n in choices],
        "answer": choices.index(answer),
    }


def _number_choices(rng: random.Random, answer: int, near: Sequence[int]) -> list[int]:
    """The answer plus three distinct plausible wrong counts (other characters', off-by-one).

    All choices stay within 0..MAX_COUNT so that each has a number word.
    """
    candidates = (*near, answer - 1, answer + 1, answer + 2, answer - 2)
    wrong = sorted({n for n in candidates if 0 <= n <= MAX_COUNT and n != answer})
    filler = (n for n in range(MAX_COUNT + 1) if n != answer and n not in wrong)
    while len(wrong) < 3:
        wrong.append(next(filler))
    choices = [answer, *rng.sample(wrong, 3)]
    rng.shuffle(choices)
    return choices


def generate_benchmarks(seed: int, n_items: int) -> dict[str, list[dict]]:
    """Held-out benchmark items with known answers, keyed by task name."""
    rng = benchmark_rng(seed)
    return {
        "agreement": _agreement_items(rng, n_items),
        "entity_cloze": [_entity_cloze_item(rng) for _ in range(n_items)],
        "counting": [_counting_item(rng) for _ in range(n_items)],
    }
