"""Cutting long plain text into documents (``prepare.files.split_txt: paragraphs``).

A book or a speech arrives as one ``.txt`` file; as one document it would land in one split and
leave the others empty. From the start of the text, with ``n = prepare.files.document_chars``:

* a document ends at the first blank line that starts at least ``n`` characters into it, so
  short paragraphs are merged and documents are not tiny;
* when no blank line starts in ``[n, 2n)`` (one long paragraph, or a file that is one line), it
  ends after the last sentence end in that range, else at the last whitespace, else at ``2n``;
* when fewer than ``n`` characters would be left at the end of the text, they stay with the
  document before instead of becoming a tiny one (documents are at most ``3n`` long).

The cuts depend on the text alone, not on how it was read (the reader streams it in pieces, so
a 50 MB line never sits in memory whole): the same file gives the same documents, hence the same
content-hash splits, on every run, and appending to a file changes only its last document.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*\s")
_WHITESPACE = re.compile(r"\s")


def cut_documents(pieces: Iterable[str], n: int) -> Iterator[str]:
    """Documents of the text that ``pieces`` (consecutive parts of it) make up."""
    buffer = ""
    for piece in pieces:
        buffer += piece
        start = 0
        while (cut := _next_cut(buffer, start, n, at_end=False)) is not None:
            yield buffer[start : cut[0]]
            start = cut[1]
        buffer = buffer[start:]
    start = 0
    while (cut := _next_cut(buffer, start, n, at_end=True)) is not None:
        yield buffer[start : cut[0]]
        start = cut[1]
    if buffer[start:].strip():
        yield buffer[start:]


def _next_cut(text: str, start: int, n: int, at_end: bool) -> tuple[int, int] | None:
    """``(end of this document, start of the next)`` for the document at ``start``, or None
    when more text is needed (or, at the end, when the rest is this document)."""
    horizon = start + 3 * n  # a decision looks at most this far: the same with any piece size
    if len(text) < horizon and not at_end:
        return None
    window_end = start + 2 * n
    blank = _BLANK_LINE.search(text, start + n, min(horizon, len(text)))
    if blank and blank.start() < window_end:
        end, following = blank.start(), blank.end()
    elif sentence := _last(_SENTENCE_END, text, start + n, window_end):
        end = following = sentence.end()
    elif space := _last(_WHITESPACE, text, start + n, window_end):
        end, following = space.start(), space.end()
    else:
        end = following = window_end
    if len(text) - following < n:  # only reachable at the end: the short rest stays here
        return None
    return end, following


def _last(pattern: re.Pattern[str], text: str, lo: int, hi: int) -> re.Match[str] | None:
    match = None
    for match in pattern.finditer(text, lo, hi):  # noqa: B007 - the last one is wanted
        pass
    return match
