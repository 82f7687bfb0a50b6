"""The word-category file prepare writes and the routing analysis reads.

``data/prepared/word_categories.json``: ``{"format", "word_pattern", "words": {word: category}}``
with categories among ``noun``, ``verb``, ``adjective``, ``adverb``, ``name``, ``number``,
``function``. The synthetic source knows the category of every word it emits; a source that
carries no per-word tags writes an empty ``words``. The evaluation depends on this file, not on
the generator's code, as DVC stages should.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json

FORMAT = "moe-pipeline-word-categories/1"


@dataclass(frozen=True)
class WordCategories:
    """How to cut text into words (``pattern``, ASCII) and the category of each known word."""

    pattern: re.Pattern[str]
    words: dict[str, str]


def write_word_categories(path: Path, categories: WordCategories) -> None:
    write_json(
        path,
        {"format": FORMAT, "word_pattern": categories.pattern.pattern, "words": categories.words},
    )


def read_word_categories(path: Path) -> WordCategories:
    if not path.is_file():
        raise PipelineError(f"{path}: not found (run the prepare stage)")
    raw = read_json(path)
    if raw.get("format") != FORMAT:
        raise PipelineError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    return WordCategories(re.compile(raw["word_pattern"]), raw["words"])
