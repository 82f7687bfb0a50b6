"""Word pools for the synthetic corpus, drawn from the lexicon by the kind of thing they fit."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.data.synthetic import lexicon as lx
from pipeline.data.synthetic.lexicon import Adjective, Noun


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

POOL_OF = {
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

GRADABLE_OF = {
    noun: tuple(a for a in pool if a.comparative) or GRADABLE for noun, pool in POOL_OF.items()
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
