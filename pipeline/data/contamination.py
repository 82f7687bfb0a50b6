"""Benchmark contamination: which items share a 13-word sequence with the training text.

The convention of the GPT-3 paper (Brown et al. 2020, "Language Models are Few-Shot Learners",
arXiv:2005.14165, appendix C): text is lowercased and cut into words, punctuation dropped; an
item is dirty when any of its 13-grams occurs in a training document. An item of fewer than 13
words is dirty when all of its words occur, in that order, in one training document.

The items are few and the training text is large, so the training text is streamed in batches
and compared with the items' word windows: memory does not grow with the corpus. Windows are
compared by a 64-bit polynomial hash (vectorised with numpy, arithmetic modulo 2^64): a
collision could only mark a clean item dirty, never hide a dirty one, and with ~10^7 windows
against ~10^5 it happens with probability below 10^-7.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence

import numpy as np

NGRAM = 13
_WORD = re.compile(r"[a-z0-9]+")
_BASE = np.uint64(0x9E3779B97F4A7C15)  # odd, so it is invertible modulo 2^64
_BASE_INVERSE = np.uint64(pow(int(_BASE), -1, 2**64))


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


class ItemWindows:
    """The word windows of a set of items, ready to be looked up in training text.

    ``vocabulary`` holds the items' words only: a training word outside it (id 0) cannot be part
    of a matching window, so windows that contain one are skipped.
    """

    def __init__(self, texts: Sequence[str], ngram: int = NGRAM):
        self.vocabulary: dict[str, int] = {}
        self.owners: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, text in enumerate(texts):
            ids = self._ids(words(text), grow=True)
            n = min(ngram, len(ids))
            if n == 0:
                continue
            for h in _window_hashes(ids, n).tolist():
                self.owners[n][h].append(index)

    def _ids(self, tokens: list[str], grow: bool) -> np.ndarray:
        if grow:
            for word in tokens:
                self.vocabulary.setdefault(word, len(self.vocabulary) + 1)
        return np.array([self.vocabulary.get(word, 0) for word in tokens], dtype=np.uint64)

    def dirty(self, documents: Iterable[Sequence[str]]) -> set[int]:
        """Indices of the items that share a window with any document. ``documents`` is an
        iterable of batches of document texts (as Parquet record batches give them)."""
        found: set[int] = set()
        for batch in documents:
            ids = np.concatenate(
                [np.append(self._ids(words(text), grow=False), 0) for text in batch] or [[]]
            ).astype(np.uint64)
            for n, by_hash in self.owners.items():
                hashes = _window_hashes(ids, n, skip_zero=True)
                known = np.fromiter(by_hash, dtype=np.uint64, count=len(by_hash))
                for h in np.unique(hashes[np.isin(hashes, known)]).tolist():
                    found.update(by_hash[h])
        return found


def _window_hashes(ids: np.ndarray, n: int, skip_zero: bool = False) -> np.ndarray:
    """Hash of every length-``n`` window of ``ids`` (without the windows that hold a 0 when
    ``skip_zero``): ``Σ_t ids[i+t]·B^t`` computed as a difference of prefix sums of
    ``ids[j]·B^j``, brought to position 0 by multiplying with ``B^-i``."""
    if len(ids) < n:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(len(ids), _BASE, dtype=np.uint64)) * _BASE_INVERSE
        inverse = np.cumprod(np.full(len(ids), _BASE_INVERSE, dtype=np.uint64)) * _BASE
        prefix = np.concatenate([[np.uint64(0)], np.cumsum(ids * powers, dtype=np.uint64)])
        hashes = (prefix[n:] - prefix[:-n]) * inverse[: len(ids) - n + 1]
    if skip_zero:
        zeros = np.concatenate([[0], np.cumsum(ids == 0)])
        hashes = hashes[(zeros[n:] - zeros[:-n]) == 0]
    return hashes


def contamination_rates(
    item_sets: dict[str, Sequence[str]], documents: Iterable[Sequence[str]]
) -> dict[str, float]:
    """The fraction of each named set of item texts that is dirty against ``documents``
    (batches of training texts), all sets in one pass over the training text."""
    names, texts = [], []
    for name, set_texts in item_sets.items():
        names += [name] * len(set_texts)
        texts += list(set_texts)
    dirty = ItemWindows(texts).dirty(documents)
    return {
        name: sum(names[i] == name for i in dirty) / len(set_texts)
        for name, set_texts in item_sets.items()
    }
