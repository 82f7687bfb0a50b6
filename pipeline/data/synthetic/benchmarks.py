"""Held-out benchmark items with known answers: agreement, entity tracking, counting.

Every task has two item sets drawn from independent streams of the seed: ``dev`` (for choosing
defaults, tuning and ablations) and ``test`` (reported). They share no item: a test item whose
text is also a dev item is drawn again. Each item carries its difficulty ``tier`` and is a
multiple-choice question with ``choices`` and the index of the right one in ``answer`` (choices
in random order, so no position rule helps).

The items are designed so that no trivial rule scores much above chance (``bench/
benchmark_baselines.py`` measures the rules on the dev items; ``tests/data/test_benchmarks.py``
asserts the bound on the shipped default's): see :func:`~pipeline.data.synthetic.episodes.
tracking_episode` for entity tracking; counting's choices are four consecutive numbers in which
the answer takes a uniformly random place, and the character asked about is drawn at random, so
"the opening count", "the smallest" and "the largest" are no shortcuts.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Iterable, Iterator, Sequence

from pipeline.data.benchmark_sets import ITEM_SETS, item_text, write_items
from pipeline.data.contamination import ItemWindows
from pipeline.data.synthetic.agreement import AGREEMENT_PHENOMENA, agreement_pair
from pipeline.data.synthetic.episodes import (
    counting_episode,
    holdings,
    tracking_episode,
    whereabouts,
)
from pipeline.data.synthetic.grammar import number_text, sentence
from pipeline.paths import Paths

Item = dict
TextBatches = Callable[[], Iterable[Sequence[str]]]


def benchmark_rng(seed: int, task: str, split: str) -> random.Random:
    """One item set's stream. Seeded with a string (hashed by SHA-512: the same on every
    machine), so every (task, split) stream is independent of the others and of the corpus
    stream, ``Random(seed)``."""
    return random.Random(f"moe-pipeline benchmark {task} {split} {seed}")


def agreement_item(rng: random.Random, index: int) -> Item:
    """A minimal pair whose head noun and predicate the corpus never combines."""
    phenomenon = AGREEMENT_PHENOMENA[index % len(AGREEMENT_PHENOMENA)]
    good, bad, _, _ = agreement_pair(rng, phenomenon, held_out=True)
    choices = [good, bad]
    rng.shuffle(choices)
    return {"choices": choices, "answer": choices.index(good), "tier": phenomenon}


def entity_cloze_item(rng: random.Random, index: int) -> Item:
    """A tracking episode; the question asks who holds the tracked object at the end."""
    episode = tracking_episode(rng)
    st = episode.story
    names = [c.name for c in st.cast]
    rng.shuffle(names)
    return {
        "context": st.text,
        "question": sentence(whereabouts(episode.target)),
        "choices": names,
        "answer": names.index(st.holder[episode.target]),
        "tier": f"hand-overs {episode.hand_overs}",
    }


def counting_item(rng: random.Random, index: int) -> Item:
    """A counting episode; the question asks the chosen character's final count."""
    episode = counting_episode(rng)
    answer = episode.count[episode.asked.name]
    choices = list(episode.window)
    rng.shuffle(choices)
    return {
        "context": episode.story.text,
        "question": sentence(holdings(episode.asked.name)),
        "choices": [number_text(n, words=True) for n in choices],
        "answer": choices.index(answer),
        "tier": f"operations {episode.operations}",
    }


TASKS: dict[str, Callable[[random.Random, int], Item]] = {
    "agreement": agreement_item,
    "entity_cloze": entity_cloze_item,
    "counting": counting_item,
}


def item_stream(seed: int, task: str, split: str) -> Iterator[Item]:
    """Endless candidate items of one task and split, each text once."""
    rng, make = benchmark_rng(seed, task, split), TASKS[task]
    seen: set[str] = set()
    for index in itertools.count():
        item = make(rng, index)
        if item_text(item) not in seen:
            seen.add(item_text(item))
            yield item


def generate_benchmarks(
    seed: int, sizes: dict[str, int], contaminated: Callable[[list[str]], set[int]]
) -> tuple[dict[str, dict[str, list[Item]]], dict[str, dict[str, int]]]:
    """``{split: {task: items}}`` and ``{task: {split_rejected: count}}``.

    Each set is the first ``sizes[split]`` items of its stream that ``contaminated`` (given
    item texts, returns the indices of those that share a 13-gram with the training text, see
    :mod:`pipeline.data.contamination`) lets through and, for test, that are not dev items.
    """
    items: dict[str, dict[str, list[Item]]] = {split: {} for split in ITEM_SETS}
    rejected: dict[str, dict[str, int]] = {task: {} for task in TASKS}
    for task in TASKS:
        dev_texts: set[str] = set()
        for split in ITEM_SETS:
            stream = item_stream(seed, task, split)
            chosen, dropped = _first_clean(stream, sizes[split], dev_texts, contaminated)
            items[split][task], rejected[task][split] = chosen, dropped
            dev_texts = {item_text(item) for item in items["dev"][task]}
    return items, rejected


def _first_clean(
    stream: Iterator[Item], n: int, exclude: set[str], contaminated: Callable[[list[str]], set[int]]
) -> tuple[list[Item], int]:
    """The first ``n`` items of ``stream`` that are not contaminated and not in ``exclude``,
    and how many contaminated ones were passed over."""
    chosen: list[Item] = []
    dropped = 0
    while len(chosen) < n:
        missing = n - len(chosen)
        batch = [i for i in itertools.islice(stream, missing + missing // 10 + 8)]
        batch = [item for item in batch if item_text(item) not in exclude]
        dirty = contaminated([item_text(item) for item in batch])
        dropped += len(dirty)
        chosen += [item for i, item in enumerate(batch) if i not in dirty][:missing]
    return chosen, dropped


def write_benchmark_sets(
    seed: int, sizes: dict[str, int], paths: Paths, training_text: TextBatches
) -> dict[str, dict[str, dict[str, int]]]:
    """Write every task's dev and test items; return ``{task: {split: {"items", "rejected"}}}``
    (``rejected``: candidates passed over for sharing a 13-gram with ``training_text``, a
    callable that streams the training split in batches of texts)."""

    def contaminated(texts: list[str]) -> set[int]:
        return ItemWindows(texts).dirty(training_text())

    items, rejected = generate_benchmarks(seed, sizes, contaminated)
    stats: dict[str, dict[str, dict[str, int]]] = {}
    for split in ITEM_SETS:
        for task, task_items in items[split].items():
            write_items(paths.benchmark(task, split), task_items)
            counts = {"items": len(task_items), "rejected": rejected[task][split]}
            stats.setdefault(task, {})[split] = counts
    return stats
