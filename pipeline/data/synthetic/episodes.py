"""Tracking and counting episodes: corpus documents shaped like the benchmark items."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.data.synthetic import lexicon as lx
from pipeline.data.synthetic.grammar import (
    Character,
    Story,
    at,
    list_names,
    new_cast,
    number_text,
    pick_adjective,
    with_article,
)
from pipeline.data.synthetic.lexicon import Noun
from pipeline.data.synthetic.pools import (
    ANIMATE_MANNER,
    FOODS,
    OBJECTS,
    PORTABLE,
    SOCIAL_VERBS,
    TRANSFER_VERBS,
)

#: Corpus episodes state an intermediate answer after a step with this probability.
EPISODE_NARRATION = 0.6

#: Share of the episodes that are counting (the rest: tracking). Counting needs copying and
#: arithmetic and is the slower of the two to learn, so it gets two thirds (bench/RESULTS.md).
COUNTING_EPISODES = 2 / 3


def tracking_episode(rng: random.Random, narrate: float = 0.0) -> tuple[Story, str, str]:
    """Objects pass between 2-3 characters: the story, the target object and the other one.

    With ``narrate`` > 0 (corpus episodes), each step is followed with that probability by a
    statement of where one of the objects is now: intermediate answers, so the skill is taught
    at every depth, not only at the end.

    A second object moves too, and the story often ends with moves of that other object or with
    sentences that mention a character without a transfer, so neither the first nor the last
    name mentioned is a reliable shortcut to the target's holder.
    """
    cast = new_cast(rng, rng.randint(2, 3))
    st = Story(rng, cast, rng.choice(lx.PLACES))
    target, other = rng.sample(OBJECTS, 2)
    st.say(f"{list_names(cast)} were playing {at(st.place)}.")
    for obj in (target, other):
        c = st.pick()
        st.holder[obj.singular] = c.name
        who, _ = st.subject(c)
        st.say(f"{who} found {with_article(pick_adjective(rng, lx.COLORS))} {obj.singular}.")
    objects = (target.singular, other.singular)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.6:
            move(st, target.singular if rng.random() < 0.5 else other.singular)
        else:
            say_distraction(st, objects)
        narrate_step(st, narrate, lambda: is_with_now(st, rng.choice(objects)))
    for _ in range(rng.randint(0, 1)):
        if rng.random() < 0.5:
            move(st, other.singular)
        else:
            say_distraction(st, (target.singular,))
        narrate_step(st, narrate, lambda: is_with_now(st, rng.choice(objects)))
    return st, target.singular, other.singular


def narrate_step(st: Story, rate: float, statement: Callable[[], str]) -> None:
    """With probability ``rate``, say ``statement()``: an episode's intermediate answer.

    No draw at rate 0, so the benchmark stream (which never narrates) is unchanged.
    """
    if rate and st.rng.random() < rate:
        st.say(statement())
        st.no_subject()


def whereabouts(obj: str) -> str:
    """The start of the statement that closes a tracking episode, and the benchmark's question."""
    return f"now the {obj} is with"


def is_with_now(st: Story, obj: str) -> str:
    """*now the kite is with Tom.*"""
    return f"{whereabouts(obj)} {st.holder[obj]}."


def tracking_document(rng: random.Random) -> str:
    """A corpus tracking episode that states where the objects ended up, in random order."""
    st, target, other = tracking_episode(rng, EPISODE_NARRATION)
    objects = [target, other] if rng.random() < 0.5 else [other, target]
    st.say(*(is_with_now(st, obj) for obj in objects))
    return st.text


def move(st: Story, obj: str) -> None:
    giver = next(c for c in st.cast if c.name == st.holder[obj])
    taker = st.pick([giver])
    st.holder[obj] = taker.name
    if st.rng.random() < 0.75:
        who, _ = st.subject(giver)
        st.say(f"{who} {st.rng.choice(TRANSFER_VERBS)} the {obj} to {taker.name}.")
    else:
        who, _ = st.subject(taker)
        st.say(f"{who} took the {obj} from {giver.name}.")


def say_distraction(st: Story, objects: Sequence[str]) -> None:
    """A sentence that names characters (and maybe an object) but moves nothing."""
    rng = st.rng
    a = st.pick()
    b = st.pick([a])
    who, _ = st.subject(a)
    kind = rng.randrange(3)
    if kind == 0:
        st.say(f"{who} wanted the {rng.choice(objects)} too.")
    elif kind == 1:
        st.say(f"{who} {rng.choice(SOCIAL_VERBS).past} {b.name}.")
    else:
        st.say(f"{who} looked at the {rng.choice(objects)} {rng.choice(ANIMATE_MANNER)}.")


@dataclass
class CountingEpisode:
    """A counting story and its bookkeeping: every character's count and who is asked about."""

    story: Story
    noun: Noun
    count: dict[str, int]
    asked: Character


def holdings(name: str) -> str:
    """The start of the statement that closes a counting episode, and the benchmark's question."""
    return f"now {name} has"


def has_now(name: str, n: int, noun: Noun) -> str:
    """*now Tom has three kites.*"""
    return f"{holdings(name)} {number_of(n, noun)}."


def number_of(n: int, noun: Noun) -> str:
    """*three kites*, *one kite*: episodes always spell the number, so one form is learned."""
    return f"{number_text(n, words=True)} {noun.form(n)}"


def counting_episode(rng: random.Random, narrate: float = 0.0) -> CountingEpisode:
    """Two characters' counts change by 1-2 finds, losses or gifts of 1-3 items.

    Counts start at 1-6, so they stay within 0..12 (number words, and inside MAX_COUNT). With
    ``narrate`` > 0 (corpus episodes), each step is followed with that probability by a
    statement of one character's count so far, as in :func:`tracking_episode`.
    """
    cast = new_cast(rng, 2)
    st = Story(rng, cast, rng.choice(lx.PLACES))
    noun, distractor = rng.sample(PORTABLE, 2)
    count = {c.name: rng.randint(1, 6) for c in cast}

    def count_now(c: Character) -> str:
        return has_now(c.name, count[c.name], noun)

    opening = dict(count)
    st.say(f"{list_names(cast)} were {at(st.place)}.")
    for c in cast:
        who, _ = st.subject(c, pronoun_rate=0.0)
        st.say(f"{who} had {number_of(count[c.name], noun)}.")
    for _ in range(rng.randint(1, 2)):
        c = st.pick()
        other = st.pick([c])
        k = rng.randint(1, 3)
        op = rng.choices(("distract", "add", "give", "remove"), (0.15, 0.35, 0.25, 0.25))[0]
        if op in ("give", "remove") and count[c.name] < k:
            op = "add"  # counts never go below zero
        who, _ = st.subject(c)
        if op == "distract":
            st.say(f"{who} found {number_of(rng.randint(1, 6), distractor)}.")
        elif op == "add":
            count[c.name] += k
            verb = rng.choice(("found", "bought", "picked up"))
            st.say(f"{who} {verb} {number_text(k, words=True)} more {noun.form(k)}.")
        elif op == "give":
            count[c.name] -= k
            count[other.name] += k
            st.say(f"{who} gave {number_of(k, noun)} to {other.name}.")
        else:
            count[c.name] -= k
            verb = "ate" if noun in FOODS else rng.choice(("lost", "sold"))
            st.say(f"{who} {verb} {number_of(k, noun)}.")
        narrate_step(st, narrate, lambda: count_now(st.pick()))
    # Usually ask about someone whose count changed, so the answer is rarely the opening count.
    changed = [c for c in cast if count[c.name] != opening[c.name]]
    asked = rng.choice(changed) if changed and rng.random() < 0.85 else st.pick()
    return CountingEpisode(st, noun, count, asked)


def counting_document(rng: random.Random) -> str:
    """A corpus counting episode that states the asked character's count, then maybe the other's."""
    episode = counting_episode(rng, EPISODE_NARRATION)
    st = episode.story
    told = [episode.asked, *(c for c in st.cast if c != episode.asked and rng.random() < 0.5)]
    st.say(*(has_now(c.name, episode.count[c.name], episode.noun) for c in told))
    return st.text
