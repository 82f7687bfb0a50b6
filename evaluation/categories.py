"""The word category of every token, for the expert-specialisation analysis.

A token is labelled by the word it belongs to, not by its own text: BPE cuts ``unhappily`` into
pieces none of which is a word, yet all of them are part of an adverb. The token stream is
turned back into bytes (exactly, :mod:`evaluation.token_bytes`), cut into words with the word
pattern the prepare stage wrote (:mod:`pipeline.data.word_categories`) and each word looked up
in its table; a token takes the category of the first word it overlaps. A token that overlaps
no word is ``punctuation`` if it holds an ASCII punctuation byte, else ``other`` (spaces,
newlines, end-of-text). A word the table does not know is ``other``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

from pipeline.data.word_categories import WordCategories

CATEGORIES = (
    "noun",
    "verb",
    "adjective",
    "adverb",
    "name",
    "number",
    "function",
    "punctuation",
    "other",
)
PUNCTUATION = CATEGORIES.index("punctuation")
OTHER = CATEGORIES.index("other")
_PUNCTUATION_BYTES = frozenset(string.punctuation.encode("ascii"))


def token_categories(
    token_ids: Sequence[int], tok_bytes: Sequence[bytes], words: WordCategories
) -> np.ndarray:
    """``(N,)`` int64 indices into :data:`CATEGORIES`, one per token of ``token_ids``."""
    pieces = [tok_bytes[i] for i in token_ids]
    text = b"".join(pieces)
    word_bytes = re.compile(words.pattern.pattern.encode("ascii"))  # the pattern is ASCII-only
    word_at = np.full(len(text), -1, dtype=np.int64)  # byte -> index of the word covering it
    word_category = []
    for index, match in enumerate(word_bytes.finditer(text)):
        word_at[match.start() : match.end()] = index
        category = words.words.get(match.group().decode("ascii"), "other")
        word_category.append(CATEGORIES.index(category))
    out = np.full(len(pieces), OTHER, dtype=np.int64)
    offset = 0
    for position, piece in enumerate(pieces):
        covered = word_at[offset : offset + len(piece)]
        inside = covered[covered >= 0]
        if inside.size:
            out[position] = word_category[inside[0]]
        elif _PUNCTUATION_BYTES.intersection(piece):
            out[position] = PUNCTUATION
        offset += len(piece)
    return out
