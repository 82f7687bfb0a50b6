"""What every source yields: a :class:`Document`, or a :class:`DataError` naming the bad input."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import PipelineError


class DataError(PipelineError):
    """Input data is missing, malformed or not what the params say it is."""


@dataclass(frozen=True)
class Document:
    text: str
    origin: str  # "file.jsonl:12", "synthetic:3", "hf:name:5": for messages only
    domain: str = ""  # the label the evaluation groups documents by (a directory, a field, ...)
