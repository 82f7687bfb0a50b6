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


#: How many times the tracked object changes hands in a tracking episode (the difficulty tier),
#: and how often each count comes up. With three characters the finder still holds the object
#: at the end with probability p0 + p2 / 3 (no hand-over: always; two: one time in three, see
#: :func:`_target_path`); p1 = 2·p0 makes that 1/3, the chance level, so "whoever found it" is
#: no shortcut to the answer.
HAND_OVERS = ((0, 0.2), (1, 0.4), (2, 0.4))
TRACKING_CAST = 3
#: A tracking episode's decoy is made the most-mentioned character with at most this many extra
#: sentences; the decoy is drawn independently of the answer, so "the most mentioned name" is
#: no shortcut either.
MAX_DECOY_SENTENCES = 4


@dataclass
class TrackingEpisode:
    """A tracking story: the tracked object, the other object, and how often the tracked one
    changed hands."""

    story: Story
    target: str
    other: str
    hand_overs: int


def tracking_episode(rng: random.Random, narrate: float = 0.0) -> TrackingEpisode:
    """Two objects pass between three characters; the question is who holds ``target``.

    Built so that no trivial rule finds the holder more often than chance: the holder is the
    finder with probability 1/3 (:data:`HAND_OVERS`); the episode never ends with the tracked
    object's last hand-over (another object moves, or someone does something else, after it), so
    the last name mentioned is another character's as often as not; and a decoy drawn
    independently of the answer is made the most-mentioned name. First-mentioned and
    position rules are uniform because names and choices come in random order.

    With ``narrate`` > 0 (corpus episodes), each step is followed with that probability by a
    statement of where one of the objects is now: intermediate answers, so the skill is taught
    at every depth, not only at the end.
    """
    cast = new_cast(rng, TRACKING_CAST)
    st = Story(rng, cast, rng.choice(lx.PLACES))
    target, other = (obj.singular for obj in rng.sample(OBJECTS, 2))
    st.say(f"{list_names(cast)} were playing {at(st.place)}.")
    finders = {obj: st.pick() for obj in (target, other)}
    for obj in rng.sample((target, other), 2):
        st.holder[obj] = finders[obj].name
        who, _ = st.subject(finders[obj])
        st.say(f"{who} found {with_article(pick_adjective(rng, lx.COLORS))} {obj}.")
    hand_overs = rng.choices([h for h, _ in HAND_OVERS], [p for _, p in HAND_OVERS])[0]
    hand_over_steps = [
        ("hand-over", taker) for taker in _target_path(st, finders[target], hand_overs)
    ]
    steps = _interleave(rng, hand_over_steps, _side_steps(rng))
    # The last hand-over is followed by one of the other object: its taker, drawn at random,
    # is the last recipient named, so "whoever got something last" is no shortcut either.
    steps.append(("other-move", None))
    for kind, taker in steps:
        if kind == "hand-over":
            move(st, target, taker)
        elif kind == "other-move":
            move(st, other)
        else:
            say_distraction(st, (target, other))
        narrate_step(st, narrate, lambda: is_with_now(st, rng.choice((target, other))))
    _promote_decoy(st, rng.choice(cast), (target, other))
    return TrackingEpisode(st, target, other, hand_overs)


def _target_path(st: Story, finder: Character, hand_overs: int) -> list[Character]:
    """Who receives the tracked object at each hand-over. The last holder is uniform over the
    cast after two hand-overs (the middle one is whoever makes that possible), another
    character than the finder after one."""
    if hand_overs == 0:
        return []
    if hand_overs == 1:
        return [st.pick([finder])]
    last = st.pick()
    middle = st.pick([finder]) if last == finder else st.pick([finder, last])
    return [middle, last]


Step = tuple[str, "Character | None"]  # ("hand-over", taker) | ("other-move" | "distract", None)


def _side_steps(rng: random.Random, at_least: int = 0) -> list[Step]:
    """``at_least``-2 steps that leave the tracked object alone: the other object moves, or a
    character does something with no transfer."""
    return [
        ("other-move" if rng.random() < 0.5 else "distract", None)
        for _ in range(rng.randint(at_least, 2))
    ]


def _interleave(rng: random.Random, ordered: list[Step], others: list[Step]) -> list[Step]:
    """``ordered`` (in its order) and ``others`` mixed at random positions."""
    slots = rng.sample(range(len(ordered) + len(others)), len(ordered))
    ordered_at, ordered_steps, other_steps = set(slots), iter(ordered), iter(others)
    return [
        next(ordered_steps) if i in ordered_at else next(other_steps)
        for i in range(len(ordered) + len(others))
    ]


def _promote_decoy(st: Story, decoy: Character, objects: Sequence[str]) -> None:
    """Add sentences in which ``decoy`` does something to someone until the decoy is the
    most-mentioned name of the story (at most :data:`MAX_DECOY_SENTENCES`)."""
    for _ in range(MAX_DECOY_SENTENCES):
        mentions = {c.name: _mentions(st.text, c.name) for c in st.cast}
        if all(mentions[decoy.name] > n for name, n in mentions.items() if name != decoy.name):
            return
        st.no_subject()  # named, not a pronoun: the sentence must add a mention
        say_distraction(st, objects, subject=decoy)


def _mentions(text: str, name: str) -> int:
    return sum(word.strip(".,!?\"'") == name for word in text.split())


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
    episode = tracking_episode(rng, EPISODE_NARRATION)
    st, objects = episode.story, [episode.target, episode.other]
    rng.shuffle(objects)
    st.say(*(is_with_now(st, obj) for obj in objects))
    return st.text


def move(st: Story, obj: str, taker: Character | None = None) -> None:
    """``obj`` changes hands: to ``taker``, or to someone other than its holder."""
    giver = next(c for c in st.cast if c.name == st.holder[obj])
    taker = taker or st.pick([giver])
    st.holder[obj] = taker.name
    if st.rng.random() < 0.75:
        who, _ = st.subject(giver)
        st.say(f"{who} {st.rng.choice(TRANSFER_VERBS)} the {obj} to {taker.name}.")
    else:
        who, _ = st.subject(taker)
        st.say(f"{who} took the {obj} from {giver.name}.")


def say_distraction(st: Story, objects: Sequence[str], subject: Character | None = None) -> None:
    """A sentence that names characters (and maybe an object) but moves nothing."""
    rng = st.rng
    a = subject or st.pick()
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
    """A counting story and its bookkeeping: every character's count, who is asked about, the
    window of consecutive numbers the answer was drawn from, and how many operations it took
    (the difficulty tier)."""

    story: Story
    noun: Noun
    count: dict[str, int]
    asked: Character
    window: range
    operations: int


def holdings(name: str) -> str:
    """The start of the statement that closes a counting episode, and the benchmark's question."""
    return f"now {name} has"


def has_now(name: str, n: int, noun: Noun) -> str:
    """*now Tom has three kites.*"""
    return f"{holdings(name)} {number_of(n, noun)}."


def number_of(n: int, noun: Noun) -> str:
    """*three kites*, *one kite*: episodes always spell the number, so one form is learned."""
    return f"{number_text(n, words=True)} {noun.form(n)}"


#: A counting episode's answer: a window of COUNT_CHOICES consecutive numbers within
#: ANSWER_RANGE is drawn first, then the answer uniformly inside it; the benchmark offers the
#: window as the choices. Every number is then the answer of a quarter of the windows that hold
#: it, so no rule that looks at the choices alone (the answer prior, the smallest, the largest)
#: beats chance.
ANSWER_RANGE = (1, 12)
COUNT_CHOICES = 4
OPENING_RANGE = (1, 9)
#: An episode in which the asked character's count did not change is kept with this
#: probability (otherwise redrawn): set on the dev items so that "the opening count" is right
#: no more often than chance (bench/benchmark_baselines.py).
KEEP_UNCHANGED = 0.5
Operation = tuple[int, str, int]  # (actor: 0 = asked, 1 = the other), kind, items


def counting_episode(rng: random.Random, narrate: float = 0.0) -> CountingEpisode:
    """Two characters' counts change by 1-3 operations (finds, losses, gifts of 1-3 items, and
    finds of something else that change nothing); the question asks one of them for their
    count. The answer is drawn first (see :data:`ANSWER_RANGE`) and the story built to reach it.

    With ``narrate`` > 0 (corpus episodes), each step is followed with that probability by a
    statement of one character's count so far, as in :func:`tracking_episode`.
    """
    cast = new_cast(rng, 2)
    asked = rng.choice(cast)
    other = cast[1 - cast.index(asked)]
    lowest = rng.randint(ANSWER_RANGE[0], ANSWER_RANGE[1] - COUNT_CHOICES + 1)
    window = range(lowest, lowest + COUNT_CHOICES)
    answer = rng.choice(window)
    opening, operations = _counting_plan(rng, answer)
    st = Story(rng, cast, rng.choice(lx.PLACES))
    noun, distractor = rng.sample(PORTABLE, 2)
    count = {asked.name: opening[0], other.name: opening[1]}

    def count_now(c: Character) -> str:
        return has_now(c.name, count[c.name], noun)

    st.say(f"{list_names(cast)} were {at(st.place)}.")
    for c in cast:
        who, _ = st.subject(c, pronoun_rate=0.0)
        st.say(f"{who} had {number_of(count[c.name], noun)}.")
    for actor, op, k in operations:
        c, receiver = (asked, other) if actor == 0 else (other, asked)
        who, _ = st.subject(c)
        if op == "distract":
            st.say(f"{who} found {number_of(rng.randint(1, 6), distractor)}.")
        elif op == "add":
            count[c.name] += k
            verb = rng.choice(("found", "bought", "picked up"))
            st.say(f"{who} {verb} {number_text(k, words=True)} more {noun.form(k)}.")
        elif op == "give":
            count[c.name] -= k
            count[receiver.name] += k
            st.say(f"{who} gave {number_of(k, noun)} to {receiver.name}.")
        else:
            count[c.name] -= k
            verb = "ate" if noun in FOODS else rng.choice(("lost", "sold"))
            st.say(f"{who} {verb} {number_of(k, noun)}.")
        narrate_step(st, narrate, lambda: count_now(st.pick()))
    assert count[asked.name] == answer
    return CountingEpisode(st, noun, count, asked, window, len(operations))


def _counting_plan(rng: random.Random, answer: int) -> tuple[tuple[int, int], list[Operation]]:
    """Opening counts (asked, other) and 1-3 operations after which the asked character holds
    ``answer``: operations are drawn, the asked character's opening is what they imply; a plan
    whose openings leave :data:`OPENING_RANGE` or whose counts would go below zero is redrawn."""
    while True:
        operations = [
            (
                rng.randrange(2),
                rng.choices(("distract", "add", "give", "remove"), (0.15, 0.35, 0.25, 0.25))[0],
                rng.randint(1, 3),
            )
            for _ in range(rng.randint(1, 3))
        ]
        change = [0, 0]
        for actor, op, k in operations:
            sign = {"distract": 0, "add": 1, "give": -1, "remove": -1}[op]
            change[actor] += sign * k
            if op == "give":
                change[1 - actor] += k
        if change[0] == 0 and rng.random() >= KEEP_UNCHANGED:
            continue
        opening = (answer - change[0], rng.randint(*OPENING_RANGE))
        if OPENING_RANGE[0] <= opening[0] <= OPENING_RANGE[1] and _never_negative(
            opening, operations
        ):
            return opening, operations


def _never_negative(opening: tuple[int, int], operations: list[Operation]) -> bool:
    counts = list(opening)
    for actor, op, k in operations:
        if op in ("give", "remove"):
            counts[actor] -= k
            if counts[actor] < 0:
                return False
        if op == "add":
            counts[actor] += k
        if op == "give":
            counts[1 - actor] += k
    return True


def counting_document(rng: random.Random) -> str:
    """A corpus counting episode that states the asked character's count, then maybe the other's."""
    episode = counting_episode(rng, EPISODE_NARRATION)
    st = episode.story
    told = [episode.asked, *(c for c in st.cast if c != episode.asked and rng.random() < 0.5)]
    st.say(*(has_now(c.name, episode.count[c.name], episode.noun) for c in told))
    return st.text
