"""The synthetic story grammar and its benchmark items.

The checks re-derive facts from the text with their own parsers and tables (number words,
regexes, the lexicon's noun/verb number) instead of trusting the generator's bookkeeping.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from pipeline.config import SyntheticSource
from pipeline.data.synthetic import (
    AGREEMENT_PHENOMENA,
    COUNTING_EPISODES,
    WORD_PATTERN,
    agreement_pair,
    generate_benchmarks,
    generate_documents,
    generate_story,
    word_categories,
)
from pipeline.data.synthetic import lexicon as lx

REPO = Path(__file__).resolve().parents[2]
SEED = 1234
CORPUS_MB = 1.0
N_ITEMS = 150
EPISODE_SHARE = SyntheticSource().episode_share
_UNITS = "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen"
_TEENS = "fifteen sixteen seventeen eighteen nineteen twenty"
NUMBERS = {w: i for i, w in enumerate(f"{_UNITS} {_TEENS}".split())}  # the test's own table
SUBJECT_PRONOUNS = {"He", "She", "They"}
PRONOUN_OF = dict(lx.NAMES)
SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return list(generate_documents(SEED, CORPUS_MB, EPISODE_SHARE))


@pytest.fixture(scope="module")
def corpus_text(corpus) -> str:
    return "\n".join(corpus)


def no_contamination(texts: list[str]) -> set[int]:
    return set()


def item_sets(seed: int, n: int) -> dict[str, dict[str, list[dict]]]:
    return generate_benchmarks(seed, {"dev": n, "test": n}, no_contamination)[0]


@pytest.fixture(scope="module")
def benchmarks() -> dict[str, list[dict]]:
    """The test items (tests/data/test_benchmarks.py covers the item sets themselves)."""
    return item_sets(SEED, N_ITEMS)["test"]


def good_and_bad(item: dict) -> tuple[str, str]:
    """An agreement item's grammatical sentence and its minimal pair."""
    return item["choices"][item["answer"]], item["choices"][1 - item["answer"]]


def number(token: str) -> int:
    return int(token) if token.isdigit() else NUMBERS[token]


def sentences(text: str) -> list[str]:
    return SENTENCE_END.split(text.strip())


# --------------------------------------------------------------------------- determinism, size
def _digest_in_subprocess(hash_seed: str) -> str:
    code = (
        "import hashlib; from pipeline.data.synthetic import generate_documents as g; "
        "print(hashlib.sha256('\\x00'.join(g(7, 0.05, 0.3)).encode()).hexdigest())"
    )
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def test_same_seed_is_byte_identical_across_processes_and_hash_seeds():
    """No hash()-of-str or set-order dependence: string hashing differs between these processes."""
    here = hashlib.sha256("\x00".join(generate_documents(7, 0.05, 0.3)).encode()).hexdigest()
    assert _digest_in_subprocess("1") == here
    assert _digest_in_subprocess("2") == here
    assert item_sets(7, 20) == item_sets(7, 20)


def test_different_seeds_give_different_corpora_and_benchmarks():
    a, b = list(generate_documents(1, 0.02, 0.3)), list(generate_documents(2, 0.02, 0.3))
    assert a[0] != b[0]
    assert not set(a) & set(b)
    assert item_sets(1, 10) != item_sets(2, 10)


@pytest.mark.parametrize("size_mb", [0.0005, 0.03])
def test_size_is_honoured_and_generation_stops_right_after(size_mb):
    docs = list(generate_documents(3, size_mb, 0.3))
    sizes = [len(d.encode("utf-8")) for d in docs]
    assert sum(sizes) >= size_mb * 1_000_000
    assert sum(sizes) - sizes[-1] < size_mb * 1_000_000  # the last story crossed the line
    assert all(d.isascii() and d.strip() == d and len(d) > 100 for d in docs)


def test_stories_are_distinct_documents(corpus):
    assert len(set(corpus)) == len(corpus)


# --------------------------------------------------------------------------- vocabulary
def test_at_least_2500_word_types_already_in_the_first_megabyte(corpus_text):
    """The corpus is a stream, so a 4 MB corpus starts with this 1 MB one: >= as many types."""
    types = {w.lower() for w in WORD_PATTERN.findall(corpus_text) if not w.isdigit()}
    assert len(types) >= 2500, len(types)


def test_every_emitted_word_has_exactly_one_known_category(corpus_text, benchmarks):
    categories = word_categories()
    allowed = {"noun", "verb", "adjective", "adverb", "name", "number", "function"}
    assert set(categories.values()) == allowed
    texts = [corpus_text]
    for items in benchmarks.values():
        for item in items:
            fields = ("sentence_good", "sentence_bad", "context", "question")
            texts.extend([item[f] for f in fields if f in item] + item.get("choices", []))
    words = {w for text in texts for w in WORD_PATTERN.findall(text)}
    assert sorted(w for w in words if w not in categories) == []
    for name, _ in lx.NAMES:
        assert categories[name] == "name"
    spot = {
        "children": "noun",
        "mice": "noun",
        "snowmen": "noun",
        "ran": "verb",
        "carries": "verb",
        "happily": "adverb",
        "unhappy": "adjective",
        "kindness": "noun",
        "biggest": "adjective",
        "seven": "number",
        "17": "number",
        "the": "function",
        "The": "function",
    }
    assert {w: categories[w] for w in spot} == spot


def test_morphology_of_irregular_and_composed_forms():
    nouns = {n.singular: n.plural for n in lx.noun_records()}
    expected_plurals = {
        "child": "children",
        "mouse": "mice",
        "goose": "geese",
        "knife": "knives",
        "sheep": "sheep",
        "box": "boxes",
        "puppy": "puppies",
        "donkey": "donkeys",
        "potato": "potatoes",
        "piano": "pianos",
        "snowman": "snowmen",
        "bookshelf": "bookshelves",
        "grandchild": "grandchildren",
        "dragonfly": "dragonflies",
        "baker": "bakers",
    }
    assert {s: nouns[s] for s in expected_plurals} == expected_plurals
    verbs = {v.base: v for v in lx._verb_records() + list(lx.re_verbs())}
    expected_verbs = {
        "run": ("runs", "ran", "running"),
        "carry": ("carries", "carried", "carrying"),
        "tie": ("ties", "tied", "tying"),
        "bake": ("bakes", "baked", "baking"),
        "watch": ("watches", "watched", "watching"),
        "play": ("plays", "played", "playing"),
        "go": ("goes", "went", "going"),
        "moo": ("moos", "mooed", "mooing"),
        "tiptoe": ("tiptoes", "tiptoed", "tiptoeing"),
        "rebuild": ("rebuilds", "rebuilt", "rebuilding"),
        "rewrap": ("rewraps", "rewrapped", "rewrapping"),
    }
    for base, forms in expected_verbs.items():
        assert (verbs[base].s, verbs[base].past, verbs[base].ing) == forms
    adjectives = {a.base: a for a in lx.ADJECTIVES}
    assert (adjectives["big"].comparative, adjectives["big"].superlative) == ("bigger", "biggest")
    assert (adjectives["good"].comparative, adjectives["good"].superlative) == ("better", "best")
    happy = adjectives["happy"]
    assert (happy.adverb, happy.negated, happy.ness) == ("happily", "unhappy", "happiness")
    assert adjectives["gentle"].adverb == "gently" and adjectives["magical"].adverb == "magically"
    assert {"swimmer", "baker", "reader"} <= {n.singular for n in lx.agent_nouns()}


# --------------------------------------------------------------------------- stories
def test_characters_recur_and_no_stray_names():
    categories = word_categories()
    rng = random.Random(99)
    for _ in range(200):
        story = generate_story(rng)
        cast = {c.name for c in story.cast}
        assert 2 <= len(cast) <= 4
        names = Counter(w for w in WORD_PATTERN.findall(story.text) if categories.get(w) == "name")
        assert set(names) == cast  # only the cast is named
        assert min(names.values()) >= 2  # and every member recurs
        pronouns = {c.pronoun for c in story.cast}
        for sentence in sentences(story.text):
            first = sentence.split()[0]
            if first in ("He", "She"):
                assert first.lower() in pronouns


def test_pronoun_and_article_agreement_in_the_corpus(corpus_text):
    assert not re.search(r"\b([Hh]e|[Ss]he) (have|are|were)\b", corpus_text)
    assert not re.search(r"\b[Tt]hey (has|is|was)\b", corpus_text)
    assert not re.search(r"\ban [^aeiouh\W]", corpus_text)
    bad_a = re.findall(r"\ba ([aeio]\w*)", corpus_text)
    assert bad_a == []


def test_many_sentence_templates_appear():
    """Both the generator's labels and label-free sentence skeletons show the variety."""
    categories = word_categories()
    rng = random.Random(5)
    stories = [generate_story(rng) for _ in range(300)]
    labels = Counter(t for s in stories for t in s.templates)
    assert len(labels) >= 25
    skeletons = set()
    for s in stories:
        for sentence in sentences(s.text):
            tokens = re.findall(r"[A-Za-z0-9]+|[^\sA-Za-z0-9]", sentence)
            shape = []
            for token in tokens:
                category = categories.get(token, "punct")
                shape.append(token.lower() if category in ("function", "punct") else category)
            skeletons.add(" ".join(shape))
    assert len(skeletons) >= 200


def test_corpus_counting_episodes_have_correct_arithmetic(corpus):
    """*Tom had 3 red boxes. He gave one to Ana. Now he has 2 red boxes.*"""
    start = re.compile(r"^(\w+) had (\w+) (\w+) (\w+)\.$")
    ops = re.compile(r"^\w+ (gave|found|lost|ate) (\w+)(?: more| to \w+)?\.$")
    end = re.compile(r"^Now \w+ (has|have) (\w+) (\w+) (\w+)\.$")
    plural_of = {n.singular: n.plural for n in lx.noun_records()}
    singular_of = {form: n.singular for n in lx.noun_records() for form in (n.singular, n.plural)}
    checked = 0
    for story in corpus[:600]:
        state = None
        for sentence in sentences(story):
            if m := start.match(sentence):
                state = [number(m[2]), m[3], m[4]]
            elif state and (m := ops.match(sentence)):
                k = number(m[2])
                state[0] += k if m[1] == "found" else -k
                assert state[0] >= 1
            elif state and (m := end.match(sentence)):
                n, adj, noun = state
                assert (number(m[2]), m[3]) == (n, adj)
                singular = singular_of[noun]
                assert m[4] == (singular if n == 1 else plural_of[singular])
                checked += 1
                state = None
            else:
                state = None
    assert checked >= 30


# --------------------------------------------------------------------------- benchmarks
def test_benchmark_tasks_and_record_shapes(benchmarks):
    assert set(benchmarks) == {"agreement", "entity_cloze", "counting"}
    assert all(len(items) == N_ITEMS for items in benchmarks.values())
    for task, items in benchmarks.items():
        for item in items:
            fields = {"choices", "answer", "tier"}
            assert set(item) == (
                fields if task == "agreement" else fields | {"context", "question"}
            )
            assert isinstance(item["answer"], int)
            assert 0 <= item["answer"] < len(item["choices"])
            assert len(set(item["choices"])) == len(item["choices"])  # answer occurs once
    json.dumps(benchmarks)


def _head_noun(tokens: list[str]) -> tuple[int, str]:
    for i, token in enumerate(tokens[1:], start=1):
        number_ = lx.noun_number(token)
        if number_:
            return i, number_
    raise AssertionError(f"no head noun in {tokens}")


def test_agreement_pairs_differ_only_in_a_verb_that_agrees_with_the_head(benchmarks):
    phenomena = Counter()
    for item in benchmarks["agreement"]:
        good, bad = (sentence.rstrip(".").split() for sentence in good_and_bad(item))
        assert good[0] == "The" and len(good) == len(bad)
        diff = [i for i, (g, b) in enumerate(zip(good, bad, strict=True)) if g != b]
        assert len(diff) == 1, item
        verb_at = diff[0]
        head_at, head_number = _head_noun(good)
        assert head_at < verb_at
        good_number, bad_number = lx.verb_number(good[verb_at]), lx.verb_number(bad[verb_at])
        assert {good_number, bad_number} == {"sg", "pl"}, item
        assert good_number == head_number, item
        between = [lx.noun_number(t) for t in good[head_at + 1 : verb_at]]
        if item["tier"] == "simple":
            assert not any(between)
        else:  # an attractor of the other number sits between the head and the verb
            assert any(n and n != head_number for n in between), item
        phenomena[item["tier"]] += 1
    assert set(phenomena) == {"simple", "across_prepositional_phrase", "across_relative_clause"}
    assert min(phenomena.values()) >= N_ITEMS // 3


def _subject(sentence: str, last: str | None, cast: list[str]) -> str | None:
    """The sentence's subject; a pronoun must pick out exactly one character, the last subject."""
    first = sentence.split()[0]
    if first in SUBJECT_PRONOUNS:
        fitting = [name for name in cast if PRONOUN_OF[name] == first.lower()]
        assert fitting == [last], (sentence, cast)  # unambiguous, and it is the last subject
        return last
    return first if first.isalpha() else None  # "Mia, Tom and Ana were ..." has no one subject


def _cast_of(context: str) -> list[str]:
    return re.findall(r"[A-Z]\w+", sentences(context)[0].split(" were ")[0])


def _replay_transfers(text: str, cast: list[str]) -> dict[str, str]:
    """Who holds each object at the end; every *Now the X is with Y.* must match the replay."""
    holder: dict[str, str] = {}
    last = None
    for sentence in sentences(text):
        subject = _subject(sentence, last, cast)
        if m := re.fullmatch(r"\S+ found an? \w+ (\w+)\.", sentence):
            holder[m[1]] = subject
        elif m := re.fullmatch(r"\S+ (?:gave|passed|threw|handed) the (\w+) to (\w+)\.", sentence):
            assert holder[m[1]] == subject, sentence  # only the holder can hand it on
            holder[m[1]] = m[2]
        elif m := re.fullmatch(r"\S+ took the (\w+) from (\w+)\.", sentence):
            assert holder[m[1]] == m[2], sentence
            holder[m[1]] = subject
        elif m := re.fullmatch(r"Now the (\w+) is with (\w+)\.", sentence):
            assert holder[m[1]] == m[2], sentence
        last = subject
    return holder


def _replay_counts(text: str, cast: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Opening and final counts; every *Now X has N nouns.* must match the replay."""
    noun = re.search(r"\. \S+ had \w+ (\w+)\.", text)[1]
    singular = SINGULAR_OF[noun]
    counted = rf"(?:{singular}|{PLURAL_OF[singular]})"
    counts: dict[str, int] = {}
    opening: dict[str, int] = {}
    last = None
    for sentence in sentences(text):
        subject = _subject(sentence, last, cast)
        if m := re.fullmatch(rf"\S+ had (\w+) {counted}\.", sentence):
            counts[subject] = opening[subject] = number(m[1])
        elif m := re.fullmatch(rf"\S+ (?:found|bought|picked up) (\w+) more {counted}\.", sentence):
            counts[subject] += number(m[1])
        elif m := re.fullmatch(rf"\S+ gave (\w+) {counted} to (\w+)\.", sentence):
            counts[subject] -= number(m[1])
            counts[m[2]] += number(m[1])
        elif m := re.fullmatch(rf"\S+ (?:ate|lost|sold) (\w+) {counted}\.", sentence):
            counts[subject] -= number(m[1])
        elif m := re.fullmatch(r"Now (\w+) has (\w+) (\w+)\.", sentence):
            n = number(m[2])
            assert (counts[m[1]], m[3]) == (n, singular if n == 1 else PLURAL_OF[singular])
        assert all(v >= 0 for v in counts.values()), sentence
        last = subject
    return opening, counts


def test_entity_cloze_answer_matches_a_replay_of_the_transfers(benchmarks):
    last_named_is_answer = 0
    for item in benchmarks["entity_cloze"]:
        obj = re.fullmatch(r"Now the (\w+) is with", item["question"])[1]
        cast = _cast_of(item["context"])
        assert sorted(cast) == sorted(item["choices"])
        holder = _replay_transfers(item["context"], cast)[obj]
        choices = item["choices"]
        assert len(choices) == 3
        assert choices[item["answer"]] == holder
        assert all(name in item["context"] for name in choices)
        names_in_order = [w for w in WORD_PATTERN.findall(item["context"]) if w in choices]
        last_named_is_answer += names_in_order[-1] == holder
    assert last_named_is_answer < 0.75 * N_ITEMS  # "last name mentioned" is no shortcut


def test_counting_answer_matches_a_replay_of_the_story(benchmarks):
    asked_count_changed = 0
    for item in benchmarks["counting"]:
        asked = re.fullmatch(r"Now (\w+) has", item["question"])[1]
        cast = _cast_of(item["context"])
        assert asked in cast
        opening, counts = _replay_counts(item["context"], cast)
        choices = item["choices"]
        assert len(choices) == 4
        assert number(choices[item["answer"]]) == counts[asked]
        assert len({number(c) for c in choices}) == 4
        asked_count_changed += counts[asked] != opening[asked]
    assert asked_count_changed > N_ITEMS // 2


def test_corpus_episodes_state_answers_that_match_a_replay(corpus):
    """Tracking and counting episodes teach the benchmark's statements, with true answers."""
    tracking = [d for d in corpus if " were playing " in sentences(d)[0]]
    counting = [d for d in corpus if re.match(r"[^.]* were (?:in|on|at) the \w+\. \S+ had ", d)]
    share = (len(tracking) + len(counting)) / len(corpus)
    assert abs(share - EPISODE_SHARE) < 0.05
    expected_counting = len(corpus) * EPISODE_SHARE * COUNTING_EPISODES
    assert abs(len(counting) - expected_counting) < 0.1 * expected_counting
    for doc in tracking:
        cast = _cast_of(doc)
        holder = _replay_transfers(doc, cast)
        final = re.findall(r"Now the (\w+) is with \w+\.", doc)[-2:]
        assert sorted(final) == sorted(holder)  # both objects' whereabouts close the episode
    stated = 0
    for doc in counting:
        _replay_counts(doc, _cast_of(doc))
        stated += len(re.findall(r"Now \w+ has ", doc))
    assert stated >= len(counting)


def test_benchmark_text_never_appears_in_the_corpus_of_the_same_seed(corpus_text, benchmarks):
    for item in benchmarks["agreement"]:
        # Without the final period: the corpus also quotes agreement sentences in dialogue.
        assert all(sentence[:-1] not in corpus_text for sentence in item["choices"])
    for task in ("entity_cloze", "counting"):
        for item in benchmarks[task]:
            assert item["context"] not in corpus_text


def _agreement_fact(sentence: str) -> tuple[str, str] | None:
    """(head noun lemma, predicate) of *The ... <verb> ...*: the verb's lemma, or be:<adjective>."""
    tokens = WORD_PATTERN.findall(sentence)
    if not tokens or tokens[0] != "The":
        return None
    head = next((t for t in tokens[1:] if lx.noun_number(t)), None)
    if head is None:
        return None
    after = tokens[tokens.index(head) + 1 :]
    at = next((i for i, t in enumerate(after) if lx.verb_number(t)), None)
    if at is None:
        return None
    verb = after[at]
    if verb in ("is", "are", "was", "were"):
        predicate = f"be:{after[at + 1]}" if at + 1 < len(after) else "be:"
    else:
        predicate = BASE_OF.get(verb, verb)
    return SINGULAR_OF[head], predicate


SINGULAR_OF = {form: n.singular for n in lx.noun_records() for form in (n.singular, n.plural)}
PLURAL_OF = {n.singular: n.plural for n in lx.noun_records()}
BASE_OF = {v.s: v.base for v in lx._verb_records()}


def test_agreement_items_ask_about_pairs_the_corpus_never_states(corpus_text, benchmarks):
    """Held-out (head, predicate) pairs: the corpus text, and many more corpus-mode samples."""
    asked = {_agreement_fact(good_and_bad(item)[0]) for item in benchmarks["agreement"]}
    assert None not in asked
    stated = set()
    for sentence in re.split(r'(?<=[.!?])\s+|"', corpus_text):
        stated.add(_agreement_fact(sentence.strip()))
    assert len(stated) > 500  # enough parsed facts for the check to mean something
    assert not asked & stated
    rng = random.Random(0)
    sampled = {
        _agreement_fact(agreement_pair(rng, AGREEMENT_PHENOMENA[i % 3], held_out=False)[0])
        for i in range(10_000)
    }
    assert not asked & sampled
