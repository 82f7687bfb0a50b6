"""Trivial baselines for the multiple-choice tasks: the rules a lazy model could find.

Every score is reported beside chance *and* the strongest of these rules on the same items, so
"above chance" cannot hide "below a shortcut". A rule picks one choice per item or abstains
(its expected accuracy there is 1 / number of choices). The rules:

- position: the first / the last choice;
- answer prior: the choice that is most often the right answer among the dev items (fitted on
  dev, applied to both splits);
- mentions in the context: the choice mentioned first / last / most often;
- task heuristics: entity tracking — who found the object, the last recipient of any object;
  counting — the asked character's opening count, the last number mentioned, the most frequent
  number, the smallest / the largest choice; agreement — the shorter / the longer sentence;
- a unigram language model, scored through the same lm-eval request path as the model
  (:class:`evaluation.lm_adapter.UnigramLM`, run by the evaluate stage).

Rules read only the item as the model sees it (context, question, choices); they know nothing
of the generator.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Item = dict
Rule = Callable[[Item], int | None]
NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
    "twenty",
]
_WORD = re.compile(r"[A-Za-z]+")


@dataclass(frozen=True)
class BaselineScore:
    name: str
    accuracy: float
    stderr: float


def accuracy(rule: Rule, items: Sequence[Item]) -> BaselineScore:
    """Expected accuracy of ``rule`` (an abstention scores 1 / number of choices)."""
    scores = []
    for item in items:
        pick = rule(item)
        scores.append(1 / len(item["choices"]) if pick is None else float(pick == item["answer"]))
    mean = sum(scores) / len(scores)
    return BaselineScore("", mean, math.sqrt(mean * (1 - mean) / len(scores)))


def chance(items: Sequence[Item]) -> float:
    return sum(1 / len(item["choices"]) for item in items) / len(items)


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _mention_positions(item: Item) -> dict[int, list[int]]:
    """For each choice, the word positions at which the context mentions it."""
    context = _words(item.get("context", ""))
    positions: dict[int, list[int]] = {i: [] for i in range(len(item["choices"]))}
    for index, choice in enumerate(item["choices"]):
        positions[index] = [p for p, word in enumerate(context) if word == choice]
    return positions


def _by_mentions(key: Callable[[list[int]], float]) -> Rule:
    """The choice whose mention positions maximise ``key``; abstain when none is mentioned or
    the best is tied."""

    def rule(item: Item) -> int | None:
        positions = {i: p for i, p in _mention_positions(item).items() if p}
        if not positions:
            return None
        ranked = sorted(positions, key=lambda i: key(positions[i]), reverse=True)
        tied = len(ranked) > 1 and key(positions[ranked[0]]) == key(positions[ranked[1]])
        return None if tied else ranked[0]

    return rule


def _pick_text(item: Item, text: str | None) -> int | None:
    return item["choices"].index(text) if text in item["choices"] else None


def first_choice(item: Item) -> int:
    return 0


def last_choice(item: Item) -> int:
    return len(item["choices"]) - 1


first_mentioned = _by_mentions(lambda p: -p[0])
last_mentioned = _by_mentions(lambda p: p[-1])
most_mentioned = _by_mentions(len)


def finder(item: Item) -> int | None:
    """Who found the object the question asks about (*Tom found a red kite.*)."""
    obj = _words(item["question"])[-3]  # "Now the kite is with"
    found = re.search(rf"(\w+) found an? \w+ {obj}\b", item["context"])
    return _pick_text(item, found.group(1) if found else None)


def last_recipient(item: Item) -> int | None:
    """The last name after which any object was handed (*... to Tom.*, *... from Tom*: the
    taker)."""
    gives = re.findall(r"to (\w+)\.|(\w+) took the", item["context"])
    return _pick_text(item, next((a or b for a, b in reversed(gives)), None))


def _numbers(text: str) -> list[str]:
    return [w.lower() for w in _words(text) if w.lower() in NUMBER_WORDS]


def opening_count(item: Item) -> int | None:
    """The asked character's first stated count (*Tom had three kites.*)."""
    name = _words(item["question"])[1]  # "Now Tom has"
    had = re.search(rf"\b{name} had (\w+)", item["context"])
    return _pick_text(item, had.group(1).lower() if had else None)


def last_number(item: Item) -> int | None:
    numbers = _numbers(item["context"])
    return _pick_text(item, numbers[-1] if numbers else None)


def most_frequent_number(item: Item) -> int | None:
    counts = Counter(_numbers(item["context"])).most_common(2)
    if not counts or (len(counts) == 2 and counts[0][1] == counts[1][1]):
        return None
    return _pick_text(item, counts[0][0])


def _number_choice(pick: Callable[[list[int]], int]) -> Rule:
    def rule(item: Item) -> int | None:
        values = [NUMBER_WORDS.index(c) for c in item["choices"] if c in NUMBER_WORDS]
        if len(values) != len(item["choices"]):
            return None
        return values.index(pick(values))

    return rule


def _by_length(longest: bool) -> Rule:
    def rule(item: Item) -> int:
        lengths = [len(choice) for choice in item["choices"]]
        return lengths.index(max(lengths) if longest else min(lengths))

    return rule


def answer_prior(fit_items: Sequence[Item]) -> Rule:
    """The choice that is most often the answer among ``fit_items`` (abstains on a tie)."""
    frequency = Counter(item["choices"][item["answer"]] for item in fit_items)

    def rule(item: Item) -> int | None:
        counts = [frequency[choice] for choice in item["choices"]]
        best = max(counts)
        return None if counts.count(best) > 1 else counts.index(best)

    return rule


def _prior_accuracy(items: Sequence[Item], dev_items: Sequence[Item] | None) -> BaselineScore:
    """The answer prior fitted on ``dev_items``, or, for the dev items themselves
    (``dev_items`` None), cross-fitted: each half scored by the prior of the other half."""
    if dev_items is not None:
        return accuracy(answer_prior(dev_items), items)
    half = len(items) // 2
    first, second = items[:half], items[half:]
    a, b = accuracy(answer_prior(second), first), accuracy(answer_prior(first), second)
    mean = (a.accuracy * len(first) + b.accuracy * len(second)) / len(items)
    return BaselineScore("", mean, math.sqrt(mean * (1 - mean) / len(items)))


GENERIC: dict[str, Rule] = {
    "first_choice": first_choice,
    "last_choice": last_choice,
    "first_mentioned": first_mentioned,
    "last_mentioned": last_mentioned,
    "most_mentioned": most_mentioned,
}
BY_TASK: dict[str, dict[str, Rule]] = {
    "entity_cloze": {"finder": finder, "last_recipient": last_recipient},
    "counting": {
        "opening_count": opening_count,
        "last_number": last_number,
        "most_frequent_number": most_frequent_number,
        "smallest_choice": _number_choice(min),
        "largest_choice": _number_choice(max),
    },
    "agreement": {"shorter_sentence": _by_length(False), "longer_sentence": _by_length(True)},
}


def rule_baselines(
    task: str, items: Sequence[Item], dev_items: Sequence[Item] | None
) -> list[BaselineScore]:
    """Every rule's score on ``items``; the answer prior is fitted on ``dev_items`` (None: the
    items are the dev items, and the prior is cross-fitted on their halves)."""
    scored = [
        (name, accuracy(rule, items)) for name, rule in {**GENERIC, **BY_TASK.get(task, {})}.items()
    ]
    scored.append(("answer_prior", _prior_accuracy(items, dev_items)))
    return [BaselineScore(name, s.accuracy, s.stderr) for name, s in scored]


def baseline_metrics(
    task: str,
    item_set: str,
    items: Sequence[Item],
    dev_items: Sequence[Item],
    scores: dict[str, float],
    unigram: dict[str, float],
) -> dict[str, float]:
    """Every baseline of one task's item set beside the model's score, as flat metric keys:
    ``<task>/<set>/baseline/<name>`` for each rule and the unigram LM, ``.../baseline_best`` (the
    strongest), ``.../above_baseline_stderr`` (the model's acc minus the strongest, in stderr:
    the larger of the model's and the binomial stderr at the strongest baseline's accuracy). ``scores`` and ``unigram`` are the harness's flat scores of the model and
    of :class:`~evaluation.lm_adapter.UnigramLM`."""
    prefix = f"{task}/{item_set}"
    fit = None if item_set == "dev" else dev_items
    named = {s.name: s.accuracy for s in rule_baselines(task, items, fit)}
    named["unigram_lm"] = unigram[f"{prefix}/acc"]
    out = {f"{prefix}/baseline/{name}": value for name, value in sorted(named.items())}
    best = max(named.values())
    out[f"{prefix}/baseline_best"] = best
    # The larger of the model's stderr and a binomial one at the baseline's accuracy (the null:
    # a model no better than the baseline): conservative, and defined when the model scores 0
    # or 1 on a few items.
    null = math.sqrt(best * (1 - best) / len(items))
    stderr = max(scores.get(f"{prefix}/acc_stderr", 0.0), null)
    if stderr:
        out[f"{prefix}/above_baseline_stderr"] = (scores[f"{prefix}/acc"] - best) / stderr
    return out


def strongest(metrics: dict[str, float], task: str, item_set: str) -> tuple[str, float]:
    """The name and score of the strongest baseline recorded for one task's item set."""
    prefix = f"{task}/{item_set}/baseline/"
    named = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
    name = max(named, key=named.get)
    return name, named[name]
