"""Stories from the templates, and the corpus stream that mixes stories with episodes."""

from __future__ import annotations

import random
from collections.abc import Iterator

from pipeline.data.synthetic import lexicon as lx
from pipeline.data.synthetic.episodes import COUNTING_EPISODES, counting_document, tracking_document
from pipeline.data.synthetic.grammar import (
    Story,
    at,
    list_names,
    new_cast,
    pick_adjective,
    with_article,
)
from pipeline.data.synthetic.pools import DAY_ADJ, FEELINGS, PLACE_ADJ, TIRED_MANNER
from pipeline.data.synthetic.templates import TEMPLATES

_TEMPLATE_FUNCTIONS = tuple(fn for _, _, fn in TEMPLATES)
_TEMPLATE_NAMES = tuple(name for name, _, _ in TEMPLATES)
_CUMULATIVE = tuple(
    sum(weight for _, weight, _ in TEMPLATES[: i + 1]) for i in range(len(TEMPLATES))
)


def _opening(st: Story) -> None:
    """Introduce the whole cast and the setting in the first sentence or two."""
    rng = st.rng
    place = st.place.singular
    kind = rng.randrange(4)
    if kind == 0:
        st.say(
            f"once upon a time, {list_names(st.cast)} lived near {with_article(pick_adjective(rng, PLACE_ADJ))} {place}."
        )
    elif kind == 1:
        time = rng.choice(lx.TIMES).singular
        st.say(
            f"one {pick_adjective(rng, lx.WEATHERLY)} {time}, {list_names(st.cast)} went to the {place}."
        )
    elif kind == 2:
        st.say(f"{list_names(st.cast)} were friends.")
        st.say(f"they liked to play in the {pick_adjective(rng, PLACE_ADJ)} {place}.")
    else:
        st.say(f"it was {with_article(pick_adjective(rng, DAY_ADJ))} day {at(st.place)}.")
        st.say(f"{list_names(st.cast)} were there.")
    st.no_subject()


def _ending(st: Story) -> None:
    """A closing sentence that names the whole cast again, so every character recurs."""
    rng = st.rng
    kind = rng.randrange(4)
    st.no_subject()
    if kind == 0:
        st.say(f"in the end, {list_names(st.cast)} were {pick_adjective(rng, FEELINGS)}.")
    elif kind == 1:
        time = rng.choice(("morning", "afternoon", "evening", "night", "day"))
        st.say(f"that {time}, {list_names(st.cast)} went home {rng.choice(TIRED_MANNER)}.")
    elif kind == 2:
        st.say(
            f"it had been truly {with_article(pick_adjective(rng, DAY_ADJ))} day for {list_names(st.cast)}."
        )
    else:
        st.say(f"from then on, {list_names(st.cast)} were the best of friends.")


def generate_story(rng: random.Random) -> Story:
    """One story: 2-4 named characters, a setting, 5-12 body sentences, an ending."""
    st = Story(rng, new_cast(rng, rng.randint(2, 4)), rng.choice(lx.PLACES))
    _opening(st)
    for _ in range(rng.randint(5, 12)):
        index = _choose_template(rng)
        st.templates.append(_TEMPLATE_NAMES[index])
        _TEMPLATE_FUNCTIONS[index](st)
    _ending(st)
    return st


def _choose_template(rng: random.Random) -> int:
    """Weighted choice by bisection on the cumulative weights (``random.choices`` is slower)."""
    target = rng.random() * _CUMULATIVE[-1]
    lo, hi = 0, len(_CUMULATIVE) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if _CUMULATIVE[mid] > target:
            hi = mid
        else:
            lo = mid + 1
    return lo


DOCUMENT_KINDS = ("story", "tracking", "counting")


def labelled_documents(
    seed: int, size_mb: float, episode_share: float
) -> Iterator[tuple[str, str]]:
    """Yield ``(kind, text)`` until the texts' UTF-8 size sums to >= size_mb * 1_000_000 bytes;
    ``kind`` is one of :data:`DOCUMENT_KINDS` (the prepared corpus's ``domain``).

    A share ``episode_share`` of them are tracking and counting episodes (``COUNTING_EPISODES``
    of them counting), shaped like the benchmark items and ending with the statement the
    benchmark asks to complete; the rest are stories.
    """
    rng = random.Random(seed)
    budget = size_mb * 1_000_000
    tracking_share = episode_share * (1 - COUNTING_EPISODES)
    written = 0
    while written < budget:
        roll = rng.random()
        if roll < tracking_share:
            kind, text = "tracking", tracking_document(rng)
        elif roll < episode_share:
            kind, text = "counting", counting_document(rng)
        else:
            kind, text = "story", generate_story(rng).text
        written += len(text.encode("utf-8"))
        yield kind, text


def generate_documents(seed: int, size_mb: float, episode_share: float) -> Iterator[str]:
    """The texts of :func:`labelled_documents`."""
    return (text for _, text in labelled_documents(seed, size_mb, episode_share))
