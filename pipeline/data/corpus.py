"""Clean a document stream and split it: normalise, drop short ones, exact de-dup, hash split.

The split is by content hash, not by position or a random draw, so a document lands in the same
split whatever the source order or corpus size — adding data never leaks old test documents
into training. Output: ``<split>.parquet`` (one ``text`` column) per split, written in batches so
memory stays bounded, each renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.config import PrepareConfig
from pipeline.data.sources import DataError, Document
from pipeline.io import atomic_path, sha256_file
from pipeline.paths import SPLITS

SCHEMA = pa.schema([("text", pa.string())])
_BATCH = 2048


@dataclass
class SplitStats:
    documents: int = 0
    bytes: int = 0


@dataclass
class CorpusStats:
    documents_read: int = 0
    duplicates_removed: int = 0
    too_short_removed: int = 0
    splits: dict[str, SplitStats] = field(default_factory=lambda: {s: SplitStats() for s in SPLITS})

    def to_json(self, files: dict[str, Path]) -> dict:
        return {
            "documents_read": self.documents_read,
            "duplicates_removed": self.duplicates_removed,
            "too_short_removed": self.too_short_removed,
            "splits": {
                name: {
                    "documents": s.documents,
                    "bytes": s.bytes,
                    "sha256": sha256_file(files[name]),
                }
                for name, s in self.splits.items()
            },
        }


def normalise(text: str, form: str) -> str:
    text = text.strip()
    return text if form == "none" else unicodedata.normalize(form, text)


def assign_split(digest: bytes, cfg: PrepareConfig) -> str:
    """Map a content hash to a split: its first 8 bytes as a uniform number in [0, 1)."""
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < cfg.split.validation:
        return "validation"
    if u < cfg.split.validation + cfg.split.test:
        return "test"
    return "train"


class _SplitWriter:
    """Buffers texts and appends them to one Parquet file in row groups."""

    def __init__(self, stack: ExitStack, path: Path):
        tmp = stack.enter_context(atomic_path(path))
        self._writer = stack.enter_context(pq.ParquetWriter(tmp, SCHEMA, compression="zstd"))
        self._buffer: list[str] = []

    def add(self, text: str) -> None:
        self._buffer.append(text)
        if len(self._buffer) >= _BATCH:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._writer.write_table(pa.table({"text": self._buffer}, schema=SCHEMA))
            self._buffer = []


def write_splits(documents: Iterable[Document], cfg: PrepareConfig, files: dict[str, Path]) -> dict:
    """Clean ``documents`` into one Parquet file per split; return the statistics as JSON."""
    stats = CorpusStats()
    seen: set[bytes] = set()
    with ExitStack() as stack:
        writers = {name: _SplitWriter(stack, path) for name, path in files.items()}
        for doc in tqdm(documents, desc="prepare", unit="doc", mininterval=2):
            stats.documents_read += 1
            text = normalise(doc.text, cfg.normalize)
            if len(text) < cfg.min_chars:
                stats.too_short_removed += 1
                continue
            data = text.encode("utf-8")
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                stats.duplicates_removed += 1
                continue
            seen.add(digest)
            split = assign_split(digest, cfg)
            writers[split].add(text)
            stats.splits[split].documents += 1
            stats.splits[split].bytes += len(data)
        _check_not_empty(stats, cfg)
        for writer in writers.values():
            writer.flush()
    return stats.to_json(files)


def _check_not_empty(stats: CorpusStats, cfg: PrepareConfig) -> None:
    """Refuse a corpus that leaves a split empty — before any file is renamed into place."""
    kept = sum(s.documents for s in stats.splits.values())
    summary = (
        f"{stats.documents_read} documents read, {stats.too_short_removed} shorter than "
        f"prepare.min_chars={cfg.min_chars}, {stats.duplicates_removed} duplicates"
    )
    if kept == 0:
        raise DataError(f"empty corpus: no document left ({summary})")
    for name, split in stats.splits.items():
        if split.documents == 0:
            raise DataError(
                f"split {name!r} is empty: {kept} documents are too few for the split fractions "
                f"{cfg.split.model_dump()} ({summary}); add data or raise the fractions"
            )
