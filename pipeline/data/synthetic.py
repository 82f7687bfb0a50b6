"""Seeded synthetic corpus: short English stories from a probabilistic grammar, plus benchmarks.

Why a grammar instead of downloaded text: the pipeline must run end to end offline, produce the
same bytes for the same seed everywhere, and come with benchmark items whose answers are known
exactly. The stories therefore carry the phenomena the benchmarks probe:

* subject-verb agreement, also across a prepositional phrase or a relative clause whose noun
  has the other number (*The keys under the bench are rusty.*);
* entity tracking: objects change hands between named characters (*Mia gave the ball to Tom.*);
* counting with correct arithmetic (*Tom had 3 red boxes. He gave one to Ana. Now he has 2 red
  boxes.*).

Determinism: every choice comes from a ``random.Random`` instance seeded with an int; no global
RNG, no ``hash()`` of strings, no iteration over sets. The corpus stream uses ``Random(seed)``
and the benchmarks ``Random(seed * 1_000_003 + 7)``, so the two never share draws. On top of
that, agreement items use (head noun, predicate) pairs that the corpus never uses
(:func:`_held_out`), so an agreement item cannot be memorised verbatim from the training data.

Public API (the prepare stage calls it): :func:`generate_documents`, :func:`generate_benchmarks`,
:func:`word_categories`. :func:`generate_story` exposes one story with its bookkeeping for tests.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from pipeline.data import lexicon as lx
from pipeline.data.lexicon import Adjective, Noun, Verb

#: How the routing analysis should cut text into the words :func:`word_categories` labels.
#: ``Mia's`` is ``Mia`` + ``s`` (the clitic is a function word); punctuation is not a word.
WORD_PATTERN = re.compile(r"[A-Za-z]+|[0-9]+")

BENCHMARK_SEED_MULTIPLIER = 1_000_003
BENCHMARK_SEED_OFFSET = 7
HELD_OUT_MODULUS = 7  # one (noun, predicate) pair in 7 is reserved for the agreement benchmark
#: Corpus episodes state an intermediate answer after a step with this probability.
EPISODE_NARRATION = 0.6
#: The names characters get: every 7th of the lexicon's (49, all three pronouns). With all 342,
#: each name was too rare for the default model to learn, within its budget, to copy a name from
#: the context (the skill entity_cloze and counting need); bench/RESULTS.md has the runs.
CAST_POOL: tuple[tuple[str, str], ...] = lx.NAMES[::7]
#: Share of the episodes that are counting (the rest: tracking). Counting needs copying and
#: arithmetic and is the slower of the two to learn, so it gets two thirds (bench/RESULTS.md).
COUNTING_EPISODES = 2 / 3
MAX_COUNT = 20  # counting choices stay within the number words zero..twenty

PRONOUNS = {
    "he": ("he", "him", "his"),
    "she": ("she", "her", "her"),
    "they": ("they", "them", "their"),
}


# --------------------------------------------------------------------------- word pools
def _visible(nouns: Sequence[Noun]) -> tuple[Noun, ...]:
    """Nouns whose number shows in their form: agreement sentences need *dog/dogs*, not *sheep*."""
    return tuple(noun for noun in nouns if not noun.invariant)


def _only(pool: Sequence[Adjective], names: str) -> tuple[Adjective, ...]:
    """The adjectives of ``pool`` named in ``names`` (a narrower pool for one kind of noun)."""
    wanted = names.split()
    return tuple(a for a in pool if a.base in wanted)


PEOPLE = lx.PEOPLE_NEUTRAL + lx.agent_nouns()
ANIMATE = _visible(lx.ANIMALS + PEOPLE + lx.PEOPLE_MALE + lx.PEOPLE_FEMALE)
PORTABLE = _visible(lx.OBJECTS + lx.FOODS)
OBJECTS = _visible(lx.OBJECTS)
FOODS = _visible(lx.FOODS)
ATTRACTORS = _visible(lx.LANDMARKS + lx.OBJECTS + lx.ANIMALS)
PROFESSIONS = {
    "he": PEOPLE + lx.PEOPLE_MALE,
    "she": PEOPLE + lx.PEOPLE_FEMALE,
    "they": PEOPLE,
}
# Adjective pools by the kind of noun they describe: a *tasty* pear, a *rusty* key, a *clever* fox.
FEELINGS = lx.FEELINGS
PERSON_ADJ = lx.PERSONALITY + lx.FEELINGS
ANIMAL_ADJ = _only(lx.SIZES, "big small tiny huge large little tall short thin enormous")
ANIMAL_ADJ += lx.COLORS + lx.TEXTURES + lx.PERSONALITY + lx.FEELINGS
HANDHELD_SIZES = _only(
    lx.SIZES, "big small tiny huge large little long short round flat thick thin"
)
HANDHELD_SIZES += _only(lx.SIZES, "heavy light enormous gigantic miniature")
OBJECT_ADJ = HANDHELD_SIZES + lx.COLORS + lx.CONDITIONS + lx.AESTHETIC + lx.TEXTURES
POSSESSION_ADJ = lx.COLORS + HANDHELD_SIZES
SCENIC = _only(lx.AESTHETIC, "beautiful wonderful colorful magical mysterious secret special")
SCENIC += _only(lx.AESTHETIC, "favorite grand great strange nice pretty ugly ancient modern old")
LANDMARK_ADJ = lx.SIZES + lx.COLORS + SCENIC
LANDMARK_ADJ += _only(lx.CONDITIONS, "dusty clean dirty wet dry new broken wooden rusty creaky")
LANDMARK_ADJ += _only(lx.CONDITIONS, "hollow sturdy slippery sparkly safe")
FOOD_ADJ = HANDHELD_SIZES + lx.COLORS + lx.TASTES
PLACE_ADJ = _only(lx.SIZES, "big small huge large little tiny enormous") + lx.WEATHERLY + SCENIC
BODY_ADJ = lx.SIZES + lx.COLORS + lx.TEXTURES
DAY_ADJ = lx.WEATHERLY + _only(
    lx.AESTHETIC, "beautiful wonderful magical strange good bad nice fine"
)
DAY_ADJ += _only(lx.AESTHETIC, "perfect special great grand odd")
GRADABLE = tuple(a for a in lx.ADJECTIVES if a.comparative)
# Adverbs that comment on the whole sentence: fine at the front (*Luckily, ...*), odd after a verb.
SENTENCE_ADVERBS = lx.words("""
certainly fairly luckily honestly thankfully hopefully usually truly simply strangely secretly
suddenly perfectly
""")
MANNER = tuple(a.adverb for a in lx.ADJECTIVES if a.adverb and a.base not in ("usual", "true"))
MANNER = tuple(m for m in MANNER if m != "enormously")
ANIMATE_MANNER = tuple(
    a.adverb
    for a in lx.FEELINGS + lx.PERSONALITY + lx.CONDITIONS + lx.TEXTURES + lx.MANNER_ONLY
    if a.adverb and a.adverb not in SENTENCE_ADVERBS
)
TIRED_MANNER = ("happily", "quietly", "slowly", "sleepily", "cheerfully", "proudly", "calmly")
TIRED_MANNER += ("joyfully", "peacefully", "silently")
# Which adjectives suit which sky: *the sun was hot*, not *the rainbow was rainy*.
WEATHER_ADJ = {
    "sun": lx.words("bright hot warm pale golden"),
    "moon": lx.words("pale bright full round silver"),
    "wind": lx.words("cold warm strong gentle chilly wild"),
    "cloud": lx.words("gray white dark fluffy pink"),
    "star": lx.words("bright pale golden tiny silver"),
    "sky": lx.words("gray blue dark cloudy pink bright"),
    "storm": lx.words("wild loud fierce dark"),
    "breeze": lx.words("cool warm gentle soft"),
    "rainbow": lx.words("bright colorful huge beautiful"),
    "puddle": lx.words("muddy deep shallow cold"),
}
COUNTABLE_SKY = tuple(n for n in lx.WEATHER if n.singular in ("cloud", "star"))
# Places one is *on* or *at* rather than *in*.
ON_PLACES = frozenset(lx.words("beach island mountain hill farm pier dock prairie"))
AT_PLACES = frozenset(lx.words("station airport lake pond river campsite harbor"))
NEGATABLE = tuple(a for a in lx.ADJECTIVES if a.negated)
NESS = tuple(a.ness for a in lx.ADJECTIVES if a.ness)
PLAIN_ADVERBS = ("soon", "later", "together", "again", "always", "often", "sometimes", "finally")
WHEN_ADVERBS = ("soon", "later", "together", "again", "today", "tomorrow", "now")
PREPOSITIONS = ("near", "behind", "under", "beside", "by", "next to", "above", "beneath")
OBJECT_VERBS = tuple(verb for verb, _, _ in lx.VERBS_OBJECT)
FOOD_VERBS = tuple(verb for verb, _, _ in lx.VERBS_FOOD)
ANIMAL_VERBS = tuple(verb for verb, _, _ in lx.VERBS_ANIMAL)
TEXT_VERBS = tuple(verb for verb, _, _ in lx.VERBS_TEXT)
BUILD_VERBS = tuple(verb for verb, _, _ in lx.VERBS_BUILD)
PERSON_VERBS = tuple(verb for verb, _, _ in lx.VERBS_PERSON)
# Person verbs that cannot be misread as getting or moving an object (no *found*, *led*).
SOCIAL_VERBS = tuple(
    verb for verb in PERSON_VERBS if verb.base not in ("find", "lead", "teach", "tell", "ask")
)
INTRANSITIVE = tuple(verb for verb, _, _ in lx.VERBS_INTRANSITIVE)
MOTION = tuple(verb for verb, _, _ in lx.VERBS_MOTION)
TEXTS = tuple(n for n in lx.OBJECTS if n.singular in ("book", "letter", "map", "card", "note"))
TEXTS += tuple(n for n in lx.OBJECTS if n.singular in ("poem", "story", "postcard"))
ANIMALS = _visible(lx.ANIMALS)
_BUILDABLE_NAMES = lx.words("""
snowman sandcastle birdhouse doghouse bookshelf toolbox kite boat wagon sled ladder fence hut
cabin bridge tower scarecrow mailbox signpost raincoat sweater scarf hat
""")
BUILDABLE = tuple(
    n for n in lx.COMPOUNDS + lx.OBJECTS + lx.LANDMARKS if n.singular in _BUILDABLE_NAMES
)
_POOL_OF = {
    noun.singular: pool
    for nouns, pool in (
        (lx.COMPOUNDS + lx.OBJECTS, OBJECT_ADJ),
        (lx.LANDMARKS, LANDMARK_ADJ),
        (lx.ANIMALS, ANIMAL_ADJ),
        (PEOPLE + lx.PEOPLE_MALE + lx.PEOPLE_FEMALE, PERSON_ADJ),
        (lx.FOODS, FOOD_ADJ),
        (lx.PLACES, PLACE_ADJ),
        (lx.BODY_PARTS, BODY_ADJ),
        (lx.TIMES, lx.WEATHERLY),
    )
    for noun in nouns
}
_GRADABLE_OF = {
    noun: tuple(a for a in pool if a.comparative) or GRADABLE for noun, pool in _POOL_OF.items()
}
RE_ACTIONS = tuple(
    (lx.re_verb(verb), pool)
    for group, pool in (
        (lx.VERBS_OBJECT, OBJECTS),
        (lx.VERBS_FOOD, FOODS),
        (lx.VERBS_TEXT, TEXTS),
        (lx.VERBS_BUILD, BUILDABLE),
        (lx.VERBS_PERSON, TEXTS),
    )
    for verb, flags, _ in group
    if "^" in flags
)
SOUNDING = tuple(n for n in lx.ANIMALS if n.singular in lx.ANIMAL_SOUNDS)
TRANSFER_VERBS = ("gave", "passed", "threw", "handed")
# Verbs that report a statement (a question is *asked*; an answer is not).
SPEECH_PAST = tuple(verb.past for verb, _, _ in lx.VERBS_SPEECH if verb.base != "ask")


def _held_out(noun: Noun, predicate: str) -> bool:
    """Is this (head noun, predicate) pair reserved for the agreement benchmark?

    A stable checksum (not ``hash()``, which is salted per process) partitions the pairs, so the
    corpus never states an agreement fact that an agreement item then asks about.
    """
    key = f"{noun.singular}|{predicate}".encode()
    return zlib.crc32(key) % HELD_OUT_MODULUS == 0


def at(place: Noun) -> str:
    """*in the park*, *on the beach*, *at the lake*."""
    if place.singular in ON_PLACES:
        return f"on the {place.singular}"
    if place.singular in AT_PLACES:
        return f"at the {place.singular}"
    return f"in the {place.singular}"


def number_text(n: int, words: bool) -> str:
    """``3`` -> ``"three"`` (when ``words`` and there is a word for it) or ``"3"``."""
    return lx.NUMBER_WORDS[n] if words and n < len(lx.NUMBER_WORDS) else str(n)


def _sentence(text: str) -> str:
    """Capitalise the first letter (after an opening quote, if any)."""
    i = 1 if text.startswith('"') else 0
    return text[:i] + text[i].upper() + text[i + 1 :]


# --------------------------------------------------------------------------- story state
@dataclass(frozen=True)
class Character:
    name: str
    pronoun: str  # "he" / "she" / "they"

    @property
    def object_pronoun(self) -> str:
        return PRONOUNS[self.pronoun][1]

    @property
    def possessive(self) -> str:
        return PRONOUNS[self.pronoun][2]


@dataclass
class Story:
    """A story being written: the cast, what each holds and counts, and the templates used."""

    rng: random.Random
    cast: list[Character]
    place: Noun
    sentences: list[str] = field(default_factory=list)
    templates: list[str] = field(default_factory=list)
    holder: dict[str, str] = field(default_factory=dict)  # object noun -> character name
    counts: dict[tuple[str, str], int] = field(default_factory=dict)  # (name, noun) -> count
    last: Character | None = None  # subject of the previous sentence

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    def say(self, *sentences: str) -> None:
        self.sentences.extend(_sentence(s) for s in sentences)

    def pick(self, exclude: Sequence[Character] = ()) -> Character:
        return self.rng.choice([c for c in self.cast if c not in exclude])

    def subject(self, c: Character, pronoun_rate: float = 0.6) -> tuple[str, bool]:
        """How to name ``c`` as the next subject, and whether the verb takes plural agreement.

        A pronoun is used only when it is unambiguous: ``c`` was the previous subject and no
        other character of the cast shares the pronoun. Names are always singular; singular
        *they* takes a plural verb (*they have*).
        """
        unique = sum(other.pronoun == c.pronoun for other in self.cast) == 1
        use_pronoun = self.last == c and unique and self.rng.random() < pronoun_rate
        self.last = c
        if use_pronoun:
            return c.pronoun, c.pronoun == "they"
        return c.name, False

    def no_subject(self) -> None:
        self.last = None


def _adj(rng: random.Random, pool: Sequence[Adjective]) -> str:
    return rng.choice(pool).base


def describe(rng: random.Random, noun: Noun) -> str:
    """An adjective that fits the kind of thing ``noun`` is."""
    return rng.choice(_POOL_OF.get(noun.singular, OBJECT_ADJ)).base


def _a(word: str) -> str:
    return f"{lx.indefinite_article(word)} {word}"


def _agree(verb: Verb, plural: bool) -> str:
    return verb.base if plural else verb.s


def _be(plural: bool, past: bool = True) -> str:
    if past:
        return "were" if plural else "was"
    return "are" if plural else "is"


def _have(plural: bool) -> str:
    return "have" if plural else "has"


def _verb_and_object(rng: random.Random) -> tuple[Verb, Noun]:
    """A transitive verb with an object it can sensibly take (*feed* a goat, *read* a map)."""
    kind = rng.random()
    if kind < 0.45:
        return rng.choice(OBJECT_VERBS), rng.choice(OBJECTS)
    if kind < 0.65:
        return rng.choice(FOOD_VERBS), rng.choice(FOODS)
    if kind < 0.8:
        return rng.choice(ANIMAL_VERBS), rng.choice(ANIMALS)
    if kind < 0.9:
        return rng.choice(TEXT_VERBS), rng.choice(TEXTS)
    return rng.choice(BUILD_VERBS), rng.choice(BUILDABLE)


# --------------------------------------------------------------------------- agreement
def _corpus_adjective(rng: random.Random, noun: Noun, pool: Sequence[Adjective]) -> str:
    """A predicate adjective for *the <noun> was ...* whose pair is not held out."""
    while True:
        adjective = rng.choice(pool).base
        if not _held_out(noun, f"be:{adjective}"):
            return adjective


def agreement_pair(
    rng: random.Random, phenomenon: str, held_out: bool
) -> tuple[str, str, Noun, str]:
    """A grammatical sentence and its minimal pair with the main verb's number flipped.

    Returns ``(good, bad, head, verb)``. ``held_out`` selects (head, predicate) pairs reserved
    for the benchmark (True) or allowed in the corpus (False). The head is the only noun that
    determines agreement; the attractor noun in between always has the other number.
    """
    while True:
        plural = rng.random() < 0.5
        animate = rng.random() < 0.55
        head = rng.choice(ANIMATE if animate else PORTABLE)
        if animate:
            verb = rng.choice(INTRANSITIVE)
            predicate, good, bad = verb.base, _agree(verb, plural), _agree(verb, not plural)
            tail = (
                rng.choice(ANIMATE_MANNER)
                if rng.random() < 0.6
                else f"every {rng.choice(lx.TIMES).singular}"
            )
        else:
            adjective = describe(rng, head)
            past = rng.random() < 0.5
            predicate, good, bad = f"be:{adjective}", _be(plural, past), _be(not plural, past)
            tail = adjective
        if _held_out(head, predicate) == held_out:
            break
    noun = head.plural if plural else head.singular
    attractor = rng.choice(ATTRACTORS)
    other = attractor.singular if plural else attractor.plural
    if phenomenon == "simple":
        subject = f"the {describe(rng, head)} {noun}"
    elif phenomenon == "across_prepositional_phrase":
        subject = f"the {noun} {rng.choice(PREPOSITIONS)} the {other}"
    elif phenomenon == "across_relative_clause":
        if animate and rng.random() < 0.5:  # subject relative: the dogs that chased the cat
            relative = rng.choice(OBJECT_VERBS).past
            subject = f"the {noun} that {relative} the {other}"
        else:  # object relative: the keys that the farmer found
            doer = rng.choice(ANIMATE)
            doer_form = doer.singular if plural else doer.plural
            relative = rng.choice(ANIMAL_VERBS if animate else OBJECT_VERBS).past
            subject = f"the {noun} that the {doer_form} {relative}"
    else:
        raise ValueError(f"unknown agreement phenomenon {phenomenon!r}")
    good_sentence = _sentence(f"{subject} {good} {tail}.")
    bad_sentence = _sentence(f"{subject} {bad} {tail}.")
    return good_sentence, bad_sentence, head, good


AGREEMENT_PHENOMENA = ("simple", "across_prepositional_phrase", "across_relative_clause")


# --------------------------------------------------------------------------- templates
# Each template writes one to four sentences into the story. They are small and independent so
# that the mix (and the tests' "many templates appear" check) is easy to see and to change.
def t_action(st: Story) -> None:
    """Intransitive action with a manner adverb or place: *Mia laughed happily.*"""
    rng = st.rng
    who, _ = st.subject(st.pick())
    verb = rng.choice(INTRANSITIVE)
    if rng.random() < 0.5:
        st.say(f"{who} {verb.past} {rng.choice(ANIMATE_MANNER)}.")
    else:
        st.say(
            f"{who} {verb.past} {rng.choice(PREPOSITIONS)} the {rng.choice(lx.LANDMARKS).singular}."
        )


def t_transitive(st: Story) -> None:
    """Transitive action with a sensible object: *Tom fed the hungry goat.*"""
    rng = st.rng
    who, _ = st.subject(st.pick())
    verb, obj = _verb_and_object(rng)
    st.say(f"{who} {verb.past} the {describe(rng, obj)} {obj.singular}.")


def t_progressive(st: Story) -> None:
    """Past progressive interrupted: *Ana was reading a map when Leo whistled loudly.*"""
    rng = st.rng
    a = st.pick()
    b = st.pick([a])
    who, plural = st.subject(a)
    if rng.random() < 0.5:
        verb, obj = _verb_and_object(rng)
        doing = f"{verb.ing} the {obj.singular}"
    else:
        doing = f"{rng.choice(INTRANSITIVE).ing} {at(st.place)}"
    other, _ = st.subject(b)
    st.say(
        f"{who} {_be(plural)} {doing} when {other} {rng.choice(INTRANSITIVE).past} {rng.choice(ANIMATE_MANNER)}."
    )


def t_describe_character(st: Story) -> None:
    """*Leo was a kind baker with a shiny blue hat.*"""
    rng = st.rng
    c = st.pick()
    who, plural = st.subject(c)
    job = rng.choice(PROFESSIONS[c.pronoun]).singular
    adj = _adj(rng, PERSON_ADJ)
    obj = rng.choice(OBJECTS)
    thing = f"{describe(rng, obj)} {obj.singular}"
    st.say(f"{who} {_be(plural)} {_a(adj)} {job} with {_a(thing)}.")


def t_describe_place(st: Story) -> None:
    """Setting: *The meadow was quiet and sunny.* / *There were 4 tall trees near the pond.*"""
    rng = st.rng
    st.no_subject()
    if rng.random() < 0.5:
        st.say(f"the {st.place.singular} was {_adj(rng, PLACE_ADJ)} and {_adj(rng, PLACE_ADJ)}.")
        return
    n = rng.randint(1, 12)
    landmark = rng.choice(lx.LANDMARKS)
    count = number_text(n, rng.random() < 0.6)
    st.say(
        f"there {_be(n != 1)} {count} {describe(rng, landmark)} {landmark.form(n)} {at(st.place)}."
    )


def t_weather(st: Story) -> None:
    """Time and weather: *On Tuesday morning, the wind was cold.* / *There were 5 clouds.*"""
    rng = st.rng
    st.no_subject()
    time = rng.choice(lx.TIMES).singular
    weather = rng.choice(lx.WEATHER)
    kind = rng.randrange(3)
    if kind == 0:
        st.say(
            f"on {rng.choice(lx.DAYS)} {time}, the {weather.singular} was {rng.choice(WEATHER_ADJ[weather.singular])}."
        )
    elif kind == 1:
        st.say(
            f"it was {_a(_adj(rng, DAY_ADJ))} {time}, and the {weather.singular} was {rng.choice(WEATHER_ADJ[weather.singular])}."
        )
    else:
        n = rng.randint(2, 9)
        many = rng.choice(COUNTABLE_SKY)  # there is one sun, but many clouds and stars
        st.say(
            f"that {time}, there were {number_text(n, True)} {many.plural} above the {st.place.singular}."
        )


def t_travel(st: Story) -> None:
    """Plural places and spans of time: *Tom had visited three castles in two weeks.*"""
    rng = st.rng
    who, _ = st.subject(st.pick())
    n, m = rng.randint(2, 9), rng.randint(2, 9)
    place, span = rng.choice(lx.PLACES), rng.choice(lx.TIMES)
    words = rng.random() < 0.5
    st.say(
        f"{who} had visited {number_text(n, words)} {place.plural} in {number_text(m, words)} {span.plural}."
    )


def t_dialogue_found(st: Story) -> None:
    """Reported find with a count: *"I found three apples," said Mia.*"""
    rng = st.rng
    c = st.pick()
    n = rng.randint(2, 9)
    noun = rng.choice(PORTABLE)
    st.counts[(c.name, noun.singular)] = st.counts.get((c.name, noun.singular), 0) + n
    st.no_subject()
    st.say(f'"I found {number_text(n, True)} {noun.plural}," said {c.name}.')


def t_dialogue_question(st: Story) -> None:
    """A question and its answer: *"Where is the kite?" asked Tom. "It is under the bench."*"""
    rng = st.rng
    a = st.pick()
    b = st.pick([a])
    obj = rng.choice(OBJECTS)
    place = rng.choice(lx.LANDMARKS).singular
    said = rng.choice(SPEECH_PAST)
    st.no_subject()
    if rng.random() < 0.5:
        st.say(f'"Where is the {obj.singular}, {b.name}?" asked {a.name}.')
        st.say(f'"It is {rng.choice(PREPOSITIONS)} the {place}," {b.name} {said}.')
    else:
        action, thing = _verb_and_object(rng)
        st.say(
            f'"Can we {action.base} the {thing.singular} {rng.choice(WHEN_ADVERBS)}?" asked {a.name}.'
        )
        answer = rng.choice(("Yes", "No", "Maybe", "Not today", "Oh yes"))
        st.say(f'"{answer}," {said} {b.name}.')


def t_dialogue_habit(st: Story) -> None:
    """Present tense in speech, 3rd singular: *"Leo feeds the ducks every Sunday," said Ana.*"""
    rng = st.rng
    a = st.pick()
    b = st.pick([a])
    verb, obj = _verb_and_object(rng)
    when = rng.choice((f"every {rng.choice(lx.DAYS)}", rng.choice(("always", "often", "never"))))
    st.no_subject()
    if when.startswith("every"):
        st.say(f'"{b.name} {verb.s} the {obj.plural} {when}," {rng.choice(SPEECH_PAST)} {a.name}.')
    else:
        st.say(
            f'"{b.name} {when} {verb.s} the {obj.singular}," {rng.choice(SPEECH_PAST)} {a.name}.'
        )


def t_dialogue_agreement(st: Story) -> None:
    """Agreement inside speech: *"The dogs near the old barn sleep quietly," said Tom.*"""
    rng = st.rng
    good, _, _, _ = agreement_pair(rng, rng.choice(AGREEMENT_PHENOMENA), held_out=False)
    st.no_subject()
    st.say(f'"{good[:-1]}," {rng.choice(SPEECH_PAST)} {st.pick().name}.')


def t_agreement(st: Story) -> None:
    """Narrated agreement: *The keys under the benches were rusty.*"""
    rng = st.rng
    good, _, _, _ = agreement_pair(rng, rng.choice(AGREEMENT_PHENOMENA), held_out=False)
    st.no_subject()
    st.say(good)


def t_possession(st: Story) -> None:
    """Possessives: *Ana's kite was red.* / *The fox's tail was fluffy.*"""
    rng = st.rng
    c = st.pick()
    st.no_subject()
    if rng.random() < 0.5:
        thing = rng.choice(PORTABLE)
        st.say(f"{c.name}'s {thing.singular} was {_corpus_adjective(rng, thing, POSSESSION_ADJ)}.")
    else:
        animal = rng.choice(lx.ANIMALS).singular
        part = rng.choice(lx.BODY_PARTS)
        plural = rng.random() < 0.5
        st.say(
            f"the {animal}'s {part.form(2 if plural else 1)} {_be(plural)} {_adj(rng, BODY_ADJ)}."
        )


def t_find(st: Story) -> None:
    """Someone finds an object, which then belongs to them: *Tom found a red kite by the gate.*"""
    rng = st.rng
    c = st.pick()
    obj = rng.choice(OBJECTS)
    who, _ = st.subject(c)
    st.holder[obj.singular] = c.name
    adj = describe(rng, obj)
    st.say(
        f"{who} found {_a(adj)} {obj.singular} {rng.choice(PREPOSITIONS)} the {rng.choice(lx.LANDMARKS).singular}."
    )


def t_transfer(st: Story) -> None:
    """An object changes hands; the holder is tracked: *Mia gave the kite to Tom.*"""
    rng = st.rng
    if not st.holder:
        t_find(st)
        return
    obj = rng.choice(sorted(st.holder))
    giver = next(c for c in st.cast if c.name == st.holder[obj])
    taker = st.pick([giver])
    st.holder[obj] = taker.name
    if rng.random() < 0.7:
        who, _ = st.subject(giver)
        st.say(f"{who} {rng.choice(TRANSFER_VERBS)} the {obj} to {taker.name}.")
    else:
        who, _ = st.subject(taker)
        st.say(f"{who} took the {obj} from {giver.name}.")


def t_counting(st: Story) -> None:
    """Counts that change with correct arithmetic, ending with the new total.

    *Tom had 3 red boxes. He gave one to Ana. Now he has 2 red boxes.*
    """
    rng = st.rng
    c = st.pick()
    noun = rng.choice(PORTABLE)
    adj = _adj(rng, lx.COLORS + lx.SIZES)
    words = rng.random() < 0.5
    key = (c.name, noun.singular)
    n = st.counts.get(key) or rng.randint(2, 9)
    who, plural = st.subject(c, pronoun_rate=0.0)
    st.say(f"{who} had {number_text(n, words)} {adj} {noun.form(n)}.")
    for _ in range(rng.randint(1, 2)):
        who, _ = st.subject(c)
        k = rng.randint(1, 4)
        if n > k and rng.random() < 0.5:
            other = st.pick([c])
            st.counts[(other.name, noun.singular)] = (
                st.counts.get((other.name, noun.singular), 0) + k
            )
            n -= k
            st.say(f"{who} gave {number_text(k, words)} to {other.name}.")
        elif n > k and rng.random() < 0.5:
            n -= k
            st.say(f"{who} {'ate' if noun in FOODS else 'lost'} {number_text(k, words)}.")
        else:
            n += k
            st.say(f"{who} found {number_text(k, words)} more.")
    st.counts[key] = n
    who, plural = st.subject(c)
    st.say(f"now {who} {_have(plural)} {number_text(n, words)} {adj} {noun.form(n)}.")


def t_movement(st: Story) -> None:
    """*Leo hurried to the old bridge.*"""
    rng = st.rng
    who, _ = st.subject(st.pick())
    verb = rng.choice(MOTION)
    landmark = rng.choice(lx.LANDMARKS)
    st.say(f"{who} {verb.past} to the {describe(rng, landmark)} {landmark.singular}.")


def t_feeling(st: Story) -> None:
    """Feeling with a reason: *Ana felt proud because she had painted the fence.*"""
    rng = st.rng
    c = st.pick()
    who, _ = st.subject(c)
    verb, obj = _verb_and_object(rng)
    st.say(f"{who} felt {_adj(rng, FEELINGS)} because {c.pronoun} {verb.past} the {obj.singular}.")


def t_comparison(st: Story) -> None:
    """Comparatives and superlatives: *The kite was bigger than the drum.*"""
    rng = st.rng
    st.no_subject()
    if rng.random() < 0.5:  # two things of one kind, an adjective that suits that kind
        kind = rng.choice((OBJECTS, FOODS, ANIMALS, lx.PLACES))
        a, b = rng.sample(kind, 2)
        adjective = rng.choice(_GRADABLE_OF[a.singular])
        st.say(f"the {a.singular} was {adjective.comparative} than the {b.singular}.")
    else:
        thing = rng.choice(PORTABLE + ANIMATE)
        adjective = rng.choice(_GRADABLE_OF[thing.singular])
        st.say(f"it was the {adjective.superlative} {thing.singular} {at(st.place)}.")


def t_compound(st: Story) -> None:
    """Closed compounds: *Near the pond stood a tall snowman.* / *Leo saw three ladybugs.*"""
    rng = st.rng
    compound = rng.choice(lx.COMPOUNDS)
    if rng.random() < 0.5:
        st.no_subject()
        st.say(
            f"{rng.choice(PREPOSITIONS)} the {st.place.singular} there was {_a(describe(rng, compound))} {compound.singular}."
        )
    else:
        n = rng.randint(2, 12)
        who, _ = st.subject(st.pick())
        st.say(f"{who} saw {number_text(n, rng.random() < 0.5)} {compound.plural}.")


def t_ness(st: Story) -> None:
    """Abstract nouns: *Tom fixed the wagon with great care.* (-ness forms)."""
    rng = st.rng
    c = st.pick()
    who, _ = st.subject(c)
    verb, obj = _verb_and_object(rng)
    st.say(f"{who} {verb.past} the {obj.singular} with great {rng.choice(NESS)}.")


def t_redo(st: Story) -> None:
    """re- verbs: *Later, Ana repainted the old fence.*"""
    rng = st.rng
    who, plural = st.subject(st.pick())
    verb, pool = rng.choice(RE_ACTIONS)
    obj = rng.choice(pool).singular
    if rng.random() < 0.5:
        st.say(f"later, {who} {verb.past} the {obj}.")
    else:
        st.say(f"{who} {_be(plural)} {verb.ing} the {obj} {rng.choice(ANIMATE_MANNER)}.")


def t_negated(st: Story) -> None:
    """un- adjectives and adverbs: *The goose looked unhappy.* / *Leo unkindly took the map.*"""
    rng = st.rng
    adjective = rng.choice(NEGATABLE)
    if rng.random() < 0.5 or not adjective.adverb:
        st.no_subject()
        st.say(f"the {rng.choice(ANIMATE).singular} looked {adjective.negated}.")
    else:
        who, _ = st.subject(st.pick())
        verb, obj = _verb_and_object(rng)
        st.say(f"{who} un{adjective.adverb} {verb.past} the {obj.singular}.")


def t_animal_sound(st: Story) -> None:
    """*The owl hooted softly.* / *"Listen! The frogs croak," said Mia.*"""
    rng = st.rng
    animal = rng.choice(SOUNDING)
    sound = lx.ANIMAL_SOUNDS[animal.singular]
    st.no_subject()
    if rng.random() < 0.5:
        st.say(f"the {animal.singular} {sound.past} {rng.choice(ANIMATE_MANNER)}.")
    else:
        plural = rng.random() < 0.5
        noun = animal.plural if plural else animal.singular
        st.say(f'"Listen! The {noun} {_agree(sound, plural)}," said {st.pick().name}.')


def t_adverb_front(st: Story) -> None:
    """Fronted adverb: *Suddenly, Ana dropped the cup.*"""
    rng = st.rng
    adverb = rng.choice(MANNER + PLAIN_ADVERBS)
    who, _ = st.subject(st.pick())
    verb, obj = _verb_and_object(rng)
    st.say(f"{adverb}, {who} {verb.past} the {obj.singular}.")


def t_greeting(st: Story) -> None:
    """Social verbs between characters: *Mia thanked Tom and hugged him.*"""
    rng = st.rng
    a = st.pick()
    b = st.pick([a])
    first, second = rng.sample(PERSON_VERBS, 2)
    who, _ = st.subject(a)
    st.say(f"{who} {first.past} {b.name} and {second.past} {b.object_pronoun}.")


def t_ordinal(st: Story) -> None:
    """Ordinals: *The third cookie was the biggest.*"""
    rng = st.rng
    st.no_subject()
    noun = rng.choice(PORTABLE)
    adjective = _corpus_adjective(rng, noun, _POOL_OF[noun.singular])
    st.say(f"the {rng.choice(lx.ORDINALS)} {noun.singular} was {adjective}.")


def t_agent(st: Story) -> None:
    """Agent nouns: *Leo wanted to be a swimmer.* / *The bakers near the bridge were busy.*"""
    rng = st.rng
    agent = rng.choice(lx.agent_nouns())
    if rng.random() < 0.5:
        who, _ = st.subject(st.pick())
        st.say(f"{who} wanted to be {_a(agent.singular)} one day.")
    else:
        st.no_subject()
        st.say(f"the {agent.plural} {at(st.place)} were {_adj(rng, PERSON_ADJ)}.")


def t_possessive_pronoun(st: Story) -> None:
    """*She put her red scarf in the basket.*"""
    rng = st.rng
    c = st.pick()
    who, _ = st.subject(c)
    obj = rng.choice(OBJECTS)
    container = rng.choice(("basket", "box", "bag", "bucket", "backpack", "toolbox", "suitcase"))
    st.say(f"{who} put {c.possessive} {describe(rng, obj)} {obj.singular} in the {container}.")


def t_age(st: Story) -> None:
    """*Tom was 7 years old.*"""
    rng = st.rng
    c = st.pick()
    who, plural = st.subject(c)
    age = rng.randint(4, 12)
    st.say(f"{who} {_be(plural)} {number_text(age, rng.random() < 0.5)} years old.")


TEMPLATES: tuple[tuple[str, float, Callable[[Story], None]], ...] = (
    ("action", 3.0, t_action),
    ("transitive", 4.0, t_transitive),
    ("progressive", 2.0, t_progressive),
    ("describe_character", 1.5, t_describe_character),
    ("describe_place", 1.5, t_describe_place),
    ("weather", 1.0, t_weather),
    ("dialogue_found", 1.0, t_dialogue_found),
    ("dialogue_question", 1.5, t_dialogue_question),
    ("dialogue_habit", 2.0, t_dialogue_habit),
    ("dialogue_agreement", 1.0, t_dialogue_agreement),
    ("agreement", 2.0, t_agreement),
    ("possession", 1.5, t_possession),
    ("find", 1.5, t_find),
    ("transfer", 2.5, t_transfer),
    ("counting", 1.5, t_counting),
    ("movement", 1.5, t_movement),
    ("feeling", 1.5, t_feeling),
    ("comparison", 1.5, t_comparison),
    ("compound", 1.5, t_compound),
    ("ness", 1.0, t_ness),
    ("redo", 1.0, t_redo),
    ("negated", 1.0, t_negated),
    ("animal_sound", 1.0, t_animal_sound),
    ("adverb_front", 1.5, t_adverb_front),
    ("greeting", 1.0, t_greeting),
    ("ordinal", 0.7, t_ordinal),
    ("agent", 1.0, t_agent),
    ("possessive_pronoun", 1.0, t_possessive_pronoun),
    ("age", 0.5, t_age),
    ("travel", 0.7, t_travel),
)
_TEMPLATE_FUNCTIONS = tuple(fn for _, _, fn in TEMPLATES)
_TEMPLATE_NAMES = tuple(name for name, _, _ in TEMPLATES)
_CUMULATIVE = tuple(
    sum(weight for _, weight, _ in TEMPLATES[: i + 1]) for i in range(len(TEMPLATES))
)


# --------------------------------------------------------------------------- stories
def _cast(rng: random.Random, size: int) -> list[Character]:
    """``size`` characters with distinct names."""
    return [Character(name, pronoun) for name, pronoun in rng.sample(CAST_POOL, size)]


def _names(cast: Sequence[Character]) -> str:
    names = [c.name for c in cast]
    return ", ".join(names[:-1]) + " and " + names[-1]


def _opening(st: Story) -> None:
    """Introduce the whole cast and the setting in the first sentence or two."""
    rng = st.rng
    place = st.place.singular
    kind = rng.randrange(4)
    if kind == 0:
        st.say(
            f"once upon a time, {_names(st.cast)} lived near {_a(_adj(rng, PLACE_ADJ))} {place}."
        )
    elif kind == 1:
        time = rng.choice(lx.TIMES).singular
        st.say(f"one {_adj(rng, lx.WEATHERLY)} {time}, {_names(st.cast)} went to the {place}.")
    elif kind == 2:
        st.say(f"{_names(st.cast)} were friends.")
        st.say(f"they liked to play in the {_adj(rng, PLACE_ADJ)} {place}.")
    else:
        st.say(f"it was {_a(_adj(rng, DAY_ADJ))} day {at(st.place)}.")
        st.say(f"{_names(st.cast)} were there.")
    st.no_subject()


def _ending(st: Story) -> None:
    """A closing sentence that names the whole cast again, so every character recurs."""
    rng = st.rng
    kind = rng.randrange(4)
    st.no_subject()
    if kind == 0:
        st.say(f"in the end, {_names(st.cast)} were {_adj(rng, FEELINGS)}.")
    elif kind == 1:
        time = rng.choice(("morning", "afternoon", "evening", "night", "day"))
        st.say(f"that {time}, {_names(st.cast)} went home {rng.choice(TIRED_MANNER)}.")
    elif kind == 2:
        st.say(f"it had been truly {_a(_adj(rng, DAY_ADJ))} day for {_names(st.cast)}.")
    else:
        st.say(f"from then on, {_names(st.cast)} were the best of friends.")


def generate_story(rng: random.Random) -> Story:
    """One story: 2-4 named characters, a setting, 5-12 body sentences, an ending."""
    st = Story(rng, _cast(rng, rng.randint(2, 4)), rng.choice(lx.PLACES))
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


def generate_documents(seed: int, size_mb: float, episode_share: float) -> Iterator[str]:
    """Yield documents until their UTF-8 size sums to >= size_mb * 1_000_000 bytes.

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
            text = tracking_document(rng)
        elif roll < episode_share:
            text = counting_document(rng)
        else:
            text = generate_story(rng).text
        written += len(text.encode("utf-8"))
        yield text


# --------------------------------------------------------------------------- benchmarks
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


def _tracking_episode(rng: random.Random, narrate: float = 0.0) -> tuple[Story, str, str]:
    """Objects pass between 2-3 characters: the story, the target object and the other one.

    With ``narrate`` > 0 (corpus episodes), each step is followed with that probability by a
    statement of where one of the objects is now: intermediate answers, so the skill is taught
    at every depth, not only at the end.

    A second object moves too, and the story often ends with moves of that other object or with
    sentences that mention a character without a transfer, so neither the first nor the last
    name mentioned is a reliable shortcut to the target's holder.
    """
    cast = _cast(rng, rng.randint(2, 3))
    st = Story(rng, cast, rng.choice(lx.PLACES))
    target, other = rng.sample(OBJECTS, 2)
    st.say(f"{_names(cast)} were playing {at(st.place)}.")
    for obj in (target, other):
        c = st.pick()
        st.holder[obj.singular] = c.name
        who, _ = st.subject(c)
        st.say(f"{who} found {_a(_adj(rng, lx.COLORS))} {obj.singular}.")
    objects = (target.singular, other.singular)
    for _ in range(rng.randint(1, 3)):
        roll = rng.random()
        if roll < 0.6:
            _move(st, target.singular if rng.random() < 0.5 else other.singular)
        else:
            _distractor(st, objects)
        _narrate(st, narrate, lambda: _is_with_now(st, rng.choice(objects)))
    for _ in range(rng.randint(0, 1)):
        if rng.random() < 0.5:
            _move(st, other.singular)
        else:
            _distractor(st, (target.singular,))
        _narrate(st, narrate, lambda: _is_with_now(st, rng.choice(objects)))
    return st, target.singular, other.singular


def _narrate(st: Story, rate: float, statement: Callable[[], str]) -> None:
    """With probability ``rate``, say ``statement()``: an episode's intermediate answer.

    No draw at rate 0, so the benchmark stream (which never narrates) is unchanged.
    """
    if rate and st.rng.random() < rate:
        st.say(statement())
        st.no_subject()


def _whereabouts(obj: str) -> str:
    """The start of the statement that closes a tracking episode, and the benchmark's question."""
    return f"now the {obj} is with"


def _is_with_now(st: Story, obj: str) -> str:
    """*now the kite is with Tom.*"""
    return f"{_whereabouts(obj)} {st.holder[obj]}."


def tracking_document(rng: random.Random) -> str:
    """A corpus tracking episode that states where the objects ended up, in random order."""
    st, target, other = _tracking_episode(rng, EPISODE_NARRATION)
    objects = [target, other] if rng.random() < 0.5 else [other, target]
    st.say(*(_is_with_now(st, obj) for obj in objects))
    return st.text


def _entity_cloze_item(rng: random.Random) -> dict:
    """A tracking episode; the question asks who holds the target object at the end."""
    st, target, _ = _tracking_episode(rng)
    names = [c.name for c in st.cast]
    rng.shuffle(names)
    return {
        "context": st.text,
        "question": _sentence(_whereabouts(target)),
        "choices": names,
        "answer": names.index(st.holder[target]),
    }


def _move(st: Story, obj: str) -> None:
    giver = next(c for c in st.cast if c.name == st.holder[obj])
    taker = st.pick([giver])
    st.holder[obj] = taker.name
    if st.rng.random() < 0.75:
        who, _ = st.subject(giver)
        st.say(f"{who} {st.rng.choice(TRANSFER_VERBS)} the {obj} to {taker.name}.")
    else:
        who, _ = st.subject(taker)
        st.say(f"{who} took the {obj} from {giver.name}.")


def _distractor(st: Story, objects: Sequence[str]) -> None:
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


def _holdings(name: str) -> str:
    """The start of the statement that closes a counting episode, and the benchmark's question."""
    return f"now {name} has"


def _has_now(name: str, n: int, noun: Noun) -> str:
    """*now Tom has three kites.*"""
    return f"{_holdings(name)} {_number_of(n, noun)}."


def _number_of(n: int, noun: Noun) -> str:
    """*three kites*, *one kite*: episodes always spell the number, so one form is learned."""
    return f"{number_text(n, words=True)} {noun.form(n)}"


def _counting_episode(rng: random.Random, narrate: float = 0.0) -> CountingEpisode:
    """Two characters' counts change by 1-2 finds, losses or gifts of 1-3 items.

    Counts start at 1-6, so they stay within 0..12 (number words, and inside MAX_COUNT). With
    ``narrate`` > 0 (corpus episodes), each step is followed with that probability by a
    statement of one character's count so far, as in :func:`_tracking_episode`.
    """
    cast = _cast(rng, 2)
    st = Story(rng, cast, rng.choice(lx.PLACES))
    noun, distractor = rng.sample(PORTABLE, 2)
    count = {c.name: rng.randint(1, 6) for c in cast}

    def count_now(c: Character) -> str:
        return _has_now(c.name, count[c.name], noun)

    opening = dict(count)
    st.say(f"{_names(cast)} were {at(st.place)}.")
    for c in cast:
        who, _ = st.subject(c, pronoun_rate=0.0)
        st.say(f"{who} had {_number_of(count[c.name], noun)}.")
    for _ in range(rng.randint(1, 2)):
        c = st.pick()
        other = st.pick([c])
        k = rng.randint(1, 3)
        op = rng.choices(("distract", "add", "give", "remove"), (0.15, 0.35, 0.25, 0.25))[0]
        if op in ("give", "remove") and count[c.name] < k:
            op = "add"  # counts never go below zero
        who, _ = st.subject(c)
        if op == "distract":
            st.say(f"{who} found {_number_of(rng.randint(1, 6), distractor)}.")
        elif op == "add":
            count[c.name] += k
            verb = rng.choice(("found", "bought", "picked up"))
            st.say(f"{who} {verb} {number_text(k, words=True)} more {noun.form(k)}.")
        elif op == "give":
            count[c.name] -= k
            count[other.name] += k
            st.say(f"{who} gave {_number_of(k, noun)} to {other.name}.")
        else:
            count[c.name] -= k
            verb = "ate" if noun in FOODS else rng.choice(("lost", "sold"))
            st.say(f"{who} {verb} {_number_of(k, noun)}.")
        _narrate(st, narrate, lambda: count_now(st.pick()))
    # Usually ask about someone whose count changed, so the answer is rarely the opening count.
    changed = [c for c in cast if count[c.name] != opening[c.name]]
    asked = rng.choice(changed) if changed and rng.random() < 0.85 else st.pick()
    return CountingEpisode(st, noun, count, asked)


def counting_document(rng: random.Random) -> str:
    """A corpus counting episode that states the asked character's count, then maybe the other's."""
    episode = _counting_episode(rng, EPISODE_NARRATION)
    st = episode.story
    told = [episode.asked, *(c for c in st.cast if c != episode.asked and rng.random() < 0.5)]
    st.say(*(_has_now(c.name, episode.count[c.name], episode.noun) for c in told))
    return st.text


def _counting_item(rng: random.Random) -> dict:
    """A counting episode; the question asks the chosen character's final count."""
    episode = _counting_episode(rng)
    answer = episode.count[episode.asked.name]
    choices = _number_choices(rng, answer, sorted(episode.count.values()))
    return {
        "context": episode.story.text,
        "question": _sentence(_holdings(episode.asked.name)),
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


# --------------------------------------------------------------------------- routing labels
def word_categories() -> dict[str, str]:
    """Part of speech of every word form the generator can emit (cut text with WORD_PATTERN).

    Values: ``noun``, ``verb``, ``adjective``, ``adverb``, ``name``, ``number``, ``function``.
    Sentence-initial capitalised forms are included; punctuation is not a word.
    """
    return dict(lx.build_categories())
