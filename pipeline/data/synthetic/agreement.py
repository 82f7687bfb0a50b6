"""Subject-verb agreement sentences and their minimal pairs (the corpus's and the benchmark's)."""

from __future__ import annotations

import random
from collections.abc import Sequence

from pipeline.data.synthetic import lexicon as lx
from pipeline.data.synthetic.grammar import agree, be, describe, is_held_out, sentence
from pipeline.data.synthetic.lexicon import Adjective, Noun
from pipeline.data.synthetic.pools import (
    ANIMAL_VERBS,
    ANIMATE,
    ANIMATE_MANNER,
    ATTRACTORS,
    INTRANSITIVE,
    OBJECT_VERBS,
    PORTABLE,
    PREPOSITIONS,
)


def corpus_adjective(rng: random.Random, noun: Noun, pool: Sequence[Adjective]) -> str:
    """A predicate adjective for *the <noun> was ...* whose pair is not held out."""
    while True:
        adjective = rng.choice(pool).base
        if not is_held_out(noun, f"be:{adjective}"):
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
            predicate, good, bad = verb.base, agree(verb, plural), agree(verb, not plural)
            tail = (
                rng.choice(ANIMATE_MANNER)
                if rng.random() < 0.6
                else f"every {rng.choice(lx.TIMES).singular}"
            )
        else:
            adjective = describe(rng, head)
            past = rng.random() < 0.5
            predicate, good, bad = f"be:{adjective}", be(plural, past), be(not plural, past)
            tail = adjective
        if is_held_out(head, predicate) == held_out:
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
    good_sentence = sentence(f"{subject} {good} {tail}.")
    bad_sentence = sentence(f"{subject} {bad} {tail}.")
    return good_sentence, bad_sentence, head, good


AGREEMENT_PHENOMENA = ("simple", "across_prepositional_phrase", "across_relative_clause")
