"""Word categories of everything the generator emits, for the routing analysis."""

from __future__ import annotations

import re

from pipeline.data.synthetic import lexicon as lx

#: How the routing analysis should cut text into the words :func:`word_categories` labels.
#: ``Mia's`` is ``Mia`` + ``s`` (the clitic is a function word); punctuation is not a word.
WORD_PATTERN = re.compile(r"[A-Za-z]+|[0-9]+")


def word_categories() -> dict[str, str]:
    """Part of speech of every word form the generator can emit (cut text with WORD_PATTERN).

    Values: ``noun``, ``verb``, ``adjective``, ``adverb``, ``name``, ``number``, ``function``.
    Sentence-initial capitalised forms are included; punctuation is not a word.
    """
    return dict(lx.build_categories())
