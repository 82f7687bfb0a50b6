"""Story templates: each writes one to four sentences into a
:class:`~pipeline.data.synthetic.grammar.Story`."""

from __future__ import annotations

from collections.abc import Callable

from pipeline.data.synthetic import lexicon as lx
from pipeline.data.synthetic.agreement import AGREEMENT_PHENOMENA, agreement_pair, corpus_adjective
from pipeline.data.synthetic.grammar import (
    Story,
    agree,
    at,
    be,
    describe,
    have,
    number_text,
    pick_adjective,
    verb_and_object,
    with_article,
)
from pipeline.data.synthetic.pools import (
    ANIMALS,
    ANIMATE,
    ANIMATE_MANNER,
    BODY_ADJ,
    COUNTABLE_SKY,
    DAY_ADJ,
    FEELINGS,
    FOODS,
    GRADABLE_OF,
    INTRANSITIVE,
    MANNER,
    MOTION,
    NEGATABLE,
    NESS,
    OBJECTS,
    PERSON_ADJ,
    PERSON_VERBS,
    PLACE_ADJ,
    PLAIN_ADVERBS,
    POOL_OF,
    PORTABLE,
    POSSESSION_ADJ,
    PREPOSITIONS,
    PROFESSIONS,
    RE_ACTIONS,
    SOUNDING,
    SPEECH_PAST,
    TRANSFER_VERBS,
    WEATHER_ADJ,
    WHEN_ADVERBS,
)


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
    verb, obj = verb_and_object(rng)
    st.say(f"{who} {verb.past} the {describe(rng, obj)} {obj.singular}.")


def t_progressive(st: Story) -> None:
    """Past progressive interrupted: *Ana was reading a map when Leo whistled loudly.*"""
    rng = st.rng
    a = st.pick()
    b = st.pick([a])
    who, plural = st.subject(a)
    if rng.random() < 0.5:
        verb, obj = verb_and_object(rng)
        doing = f"{verb.ing} the {obj.singular}"
    else:
        doing = f"{rng.choice(INTRANSITIVE).ing} {at(st.place)}"
    other, _ = st.subject(b)
    st.say(
        f"{who} {be(plural)} {doing} when {other} {rng.choice(INTRANSITIVE).past} {rng.choice(ANIMATE_MANNER)}."
    )


def t_describe_character(st: Story) -> None:
    """*Leo was a kind baker with a shiny blue hat.*"""
    rng = st.rng
    c = st.pick()
    who, plural = st.subject(c)
    job = rng.choice(PROFESSIONS[c.pronoun]).singular
    adj = pick_adjective(rng, PERSON_ADJ)
    obj = rng.choice(OBJECTS)
    thing = f"{describe(rng, obj)} {obj.singular}"
    st.say(f"{who} {be(plural)} {with_article(adj)} {job} with {with_article(thing)}.")


def t_describe_place(st: Story) -> None:
    """Setting: *The meadow was quiet and sunny.* / *There were 4 tall trees near the pond.*"""
    rng = st.rng
    st.no_subject()
    if rng.random() < 0.5:
        st.say(
            f"the {st.place.singular} was {pick_adjective(rng, PLACE_ADJ)} and {pick_adjective(rng, PLACE_ADJ)}."
        )
        return
    n = rng.randint(1, 12)
    landmark = rng.choice(lx.LANDMARKS)
    count = number_text(n, rng.random() < 0.6)
    st.say(
        f"there {be(n != 1)} {count} {describe(rng, landmark)} {landmark.form(n)} {at(st.place)}."
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
            f"it was {with_article(pick_adjective(rng, DAY_ADJ))} {time}, and the {weather.singular} was {rng.choice(WEATHER_ADJ[weather.singular])}."
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
        action, thing = verb_and_object(rng)
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
    verb, obj = verb_and_object(rng)
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
        st.say(f"{c.name}'s {thing.singular} was {corpus_adjective(rng, thing, POSSESSION_ADJ)}.")
    else:
        animal = rng.choice(lx.ANIMALS).singular
        part = rng.choice(lx.BODY_PARTS)
        plural = rng.random() < 0.5
        st.say(
            f"the {animal}'s {part.form(2 if plural else 1)} {be(plural)} {pick_adjective(rng, BODY_ADJ)}."
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
        f"{who} found {with_article(adj)} {obj.singular} {rng.choice(PREPOSITIONS)} the {rng.choice(lx.LANDMARKS).singular}."
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
    adj = pick_adjective(rng, lx.COLORS + lx.SIZES)
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
    st.say(f"now {who} {have(plural)} {number_text(n, words)} {adj} {noun.form(n)}.")


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
    verb, obj = verb_and_object(rng)
    st.say(
        f"{who} felt {pick_adjective(rng, FEELINGS)} because {c.pronoun} {verb.past} the {obj.singular}."
    )


def t_comparison(st: Story) -> None:
    """Comparatives and superlatives: *The kite was bigger than the drum.*"""
    rng = st.rng
    st.no_subject()
    if rng.random() < 0.5:  # two things of one kind, an adjective that suits that kind
        kind = rng.choice((OBJECTS, FOODS, ANIMALS, lx.PLACES))
        a, b = rng.sample(kind, 2)
        adjective = rng.choice(GRADABLE_OF[a.singular])
        st.say(f"the {a.singular} was {adjective.comparative} than the {b.singular}.")
    else:
        thing = rng.choice(PORTABLE + ANIMATE)
        adjective = rng.choice(GRADABLE_OF[thing.singular])
        st.say(f"it was the {adjective.superlative} {thing.singular} {at(st.place)}.")


def t_compound(st: Story) -> None:
    """Closed compounds: *Near the pond stood a tall snowman.* / *Leo saw three ladybugs.*"""
    rng = st.rng
    compound = rng.choice(lx.COMPOUNDS)
    if rng.random() < 0.5:
        st.no_subject()
        st.say(
            f"{rng.choice(PREPOSITIONS)} the {st.place.singular} there was {with_article(describe(rng, compound))} {compound.singular}."
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
    verb, obj = verb_and_object(rng)
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
        st.say(f"{who} {be(plural)} {verb.ing} the {obj} {rng.choice(ANIMATE_MANNER)}.")


def t_negated(st: Story) -> None:
    """un- adjectives and adverbs: *The goose looked unhappy.* / *Leo unkindly took the map.*"""
    rng = st.rng
    adjective = rng.choice(NEGATABLE)
    if rng.random() < 0.5 or not adjective.adverb:
        st.no_subject()
        st.say(f"the {rng.choice(ANIMATE).singular} looked {adjective.negated}.")
    else:
        who, _ = st.subject(st.pick())
        verb, obj = verb_and_object(rng)
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
        st.say(f'"Listen! The {noun} {agree(sound, plural)}," said {st.pick().name}.')


def t_adverb_front(st: Story) -> None:
    """Fronted adverb: *Suddenly, Ana dropped the cup.*"""
    rng = st.rng
    adverb = rng.choice(MANNER + PLAIN_ADVERBS)
    who, _ = st.subject(st.pick())
    verb, obj = verb_and_object(rng)
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
    adjective = corpus_adjective(rng, noun, POOL_OF[noun.singular])
    st.say(f"the {rng.choice(lx.ORDINALS)} {noun.singular} was {adjective}.")


def t_agent(st: Story) -> None:
    """Agent nouns: *Leo wanted to be a swimmer.* / *The bakers near the bridge were busy.*"""
    rng = st.rng
    agent = rng.choice(lx.agent_nouns())
    if rng.random() < 0.5:
        who, _ = st.subject(st.pick())
        st.say(f"{who} wanted to be {with_article(agent.singular)} one day.")
    else:
        st.no_subject()
        st.say(f"the {agent.plural} {at(st.place)} were {pick_adjective(rng, PERSON_ADJ)}.")


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
    st.say(f"{who} {be(plural)} {number_text(age, rng.random() < 0.5)} years old.")


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
