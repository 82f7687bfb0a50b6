"""Clean documents and split them: normalise, drop short ones, exact de-dup, hash split, shards.

The split is by content hash, not by position or a random draw, so a document lands in the same
split whatever the source order or corpus size: adding data never leaks old test documents
into training.

The work runs per source unit (:mod:`pipeline.data.sources`), in parallel processes or shard
jobs, then one merge:

1. :func:`clean_unit` cleans one unit's documents into its staging directory: each split's
   documents as Parquet parts of about ``prepare.shard_mb`` MB and the fingerprints of the kept
   documents (:mod:`pipeline.data.fingerprints`); it drops the duplicates within the unit and
   returns the counts, which the stage records in the unit's completion marker.
2. :func:`merge_units` walks the units in order, drops the documents an earlier unit already
   kept (rewriting only the parts that hold such a duplicate), numbers the parts of each split
   ``<split>-00000.parquet``, ... and writes each split's manifest (:mod:`pipeline.data.prepared`).
   Until every split is known to be non-empty nothing is moved into place.

Everything a unit writes depends on the unit alone, and the merge on the units in order, so the
output bytes are the same for any number of workers or jobs. Memory is bounded by a Parquet row
group per split and the fingerprints: 8 bytes per kept document.
"""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import PrepareConfig
from pipeline.data.documents import DataError, Document
from pipeline.data.fingerprints import FINGERPRINT, FingerprintSet, fingerprints
from pipeline.data.prepared import (
    SCHEMA,
    DocumentShard,
    documents_table,
    shard_name,
    write_manifest,
)
from pipeline.io import atomic_path, sha256_file
from pipeline.paths import SPLITS

_BATCH = 2048  # documents per row group and per de-duplication step


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


# --------------------------------------------------------------------------- one unit
@dataclass
class _Part:
    """One Parquet part being written: its counts, including per domain."""

    file: str
    documents: int = 0
    bytes: int = 0
    domains: Counter = field(default_factory=Counter)  # domain -> documents
    domain_bytes: Counter = field(default_factory=Counter)

    def to_json(self, sha256: str) -> dict:
        return {
            "file": self.file,
            "documents": self.documents,
            "bytes": self.bytes,
            "sha256": sha256,
            "domains": {d: [n, self.domain_bytes[d]] for d, n in sorted(self.domains.items())},
        }


class _PartWriter:
    """A split's documents of one unit as Parquet parts, a new part every ``shard_bytes``."""

    def __init__(self, directory: Path, split: str, shard_bytes: float):
        self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
        self.done: list[dict] = []
        self._part: _Part | None = None
        self._texts_utf8: list[bytes] = []
        self._domains: list[str] = []

    def add(self, text_utf8: bytes, domain: str) -> None:
        if self._part is None:
            name = f"{self.split}-{len(self.done):04d}.parquet"
            self._part = _Part(name)
            self._atomic = atomic_path(self.directory / name)
            self._writer = pq.ParquetWriter(self._atomic.__enter__(), SCHEMA, compression="zstd")
        self._texts_utf8.append(text_utf8)
        self._domains.append(domain)
        part, size = self._part, len(text_utf8)
        part.documents += 1
        part.bytes += size
        part.domains[domain] += 1
        part.domain_bytes[domain] += size
        if len(self._texts_utf8) >= _BATCH:
            self._flush()
        if part.bytes >= self.shard_bytes:
            self.close()

    def _flush(self) -> None:
        if self._texts_utf8:
            self._writer.write_table(documents_table(self._texts_utf8, self._domains))
            self._texts_utf8, self._domains = [], []

    def close(self) -> None:
        if self._part is None:
            return
        self._flush()
        self._writer.close()
        self._atomic.__exit__(None, None, None)
        path = self.directory / self._part.file
        self.done.append(self._part.to_json(sha256_file(path)))
        self._part = None


def clean_unit(cfg: PrepareConfig, documents: Iterable[Document], directory: Path) -> dict:
    """Clean one unit's documents into Parquet parts and fingerprints under ``directory``;
    return the counts (the completion marker's result)."""
    directory.mkdir(parents=True, exist_ok=True)
    writers = {s: _PartWriter(directory, s, cfg.shard_mb * 1e6) for s in SPLITS}
    with ExitStack() as stack:  # each split's kept fingerprints, in document order
        kept = {s: stack.enter_context(open(_fingerprint_file(directory, s), "wb")) for s in SPLITS}
        counts = _clean_documents(cfg, iter(documents), writers, kept)
    result: dict = {**counts, "splits": {}}
    for split, writer in writers.items():
        writer.close()
        result["splits"][split] = writer.done
    return result


def _fingerprint_file(directory: Path, split: str) -> Path:
    return directory / f"{split}.fingerprints"


def _clean_documents(
    cfg: PrepareConfig, documents: Iterator[Document], writers: dict, kept: dict
) -> dict[str, int]:
    max_bytes = cfg.max_document_mb * 1e6
    seen = FingerprintSet()
    read = too_short = duplicates = 0
    while batch := list(itertools.islice(documents, _BATCH)):
        read += len(batch)
        rows = []
        for doc in batch:
            text = normalise(doc.text, cfg.normalize)
            if len(text) < cfg.min_chars:
                too_short += 1
                continue
            data = text.encode("utf-8")
            if len(data) > max_bytes:
                raise DataError(
                    f"{doc.origin}: a document of {len(data)} bytes, more than "
                    f"prepare.max_document_mb = {cfg.max_document_mb:g} MB; raise the limit or "
                    "cut it (for .txt files: prepare.files.split_txt: paragraphs)"
                )
            rows.append((data, doc.domain, hashlib.sha256(data).digest()))
        if not rows:
            continue
        prints = fingerprints([row[2] for row in rows])
        keep = seen.first_new(prints)
        duplicates += len(rows) - int(keep.sum())
        splits = [assign_split(row[2], cfg) for row in rows]
        for i in np.flatnonzero(keep):
            data, domain, _ = rows[i]
            writers[splits[i]].add(data, domain)
        for split, handle in kept.items():
            chosen = keep & np.array([s == split for s in splits])
            handle.write(prints[chosen].tobytes())
    return {"read": read, "too_short": too_short, "duplicates": duplicates}


# --------------------------------------------------------------------------- merge
@dataclass
class CorpusStats:
    documents_read: int = 0
    duplicates_removed: int = 0
    too_short_removed: int = 0
    shards: dict[str, list[DocumentShard]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    documents: Counter = field(default_factory=Counter)  # split -> documents
    domains: dict[str, list[int]] = field(default_factory=dict)  # domain -> [documents, bytes]

    def count(self, split: str, part: dict) -> None:
        self.documents[split] += part["documents"]
        for domain, (n, b) in part["domains"].items():
            totals = self.domains.setdefault(domain, [0, 0])
            totals[0] += n
            totals[1] += b

    def split_documents(self, split: str) -> int:
        return self.documents[split]

    def to_json(self, manifests: dict[str, Path]) -> dict:
        return {
            "documents_read": self.documents_read,
            "duplicates_removed": self.duplicates_removed,
            "too_short_removed": self.too_short_removed,
            "splits": {
                split: {
                    "documents": self.split_documents(split),
                    "bytes": sum(s.bytes for s in shards),
                    "shards": len(shards),
                    "sha256": sha256_file(manifests[split]),
                }
                for split, shards in self.shards.items()
            },
            "domains": {
                d: {"documents": n, "bytes": b} for d, (n, b) in sorted(self.domains.items())
            },
        }


def merge_units(
    cfg: PrepareConfig, results: list[tuple[Path, dict]], out_dirs: dict[str, Path]
) -> CorpusStats:
    """Merge the units' parts (``(unit directory, result)`` in unit order) into numbered shards
    and manifests under ``out_dirs`` (empty directories); return the statistics. A corpus that
    leaves a split empty is refused before anything is moved there."""
    stats = CorpusStats()
    seen = FingerprintSet()
    kept: list[tuple[Path, str, dict]] = []  # (unit directory, split, part), in order
    for directory, result in results:
        stats.documents_read += result["read"]
        stats.too_short_removed += result["too_short"]
        stats.duplicates_removed += result["duplicates"]
        for split in SPLITS:
            prints = np.fromfile(_fingerprint_file(directory, split), dtype=FINGERPRINT)
            earlier = seen.contains(prints)
            seen.add(prints[~earlier])
            stats.duplicates_removed += int(earlier.sum())
            start = 0
            for part in result["splits"][split]:
                drop = earlier[start : start + part["documents"]]
                start += part["documents"]
                if drop.any():
                    part = _drop_rows(directory / part["file"], drop)
                if part["documents"]:
                    kept.append((directory, split, part))
                    stats.count(split, part)
    check_not_empty(stats, cfg)
    for directory, split, part in kept:
        target = out_dirs[split] / shard_name(split, len(stats.shards[split]))
        (directory / part["file"]).rename(target)
        stats.shards[split].append(
            DocumentShard(target, part["documents"], part["bytes"], part["sha256"])
        )
    for split in SPLITS:
        write_manifest(out_dirs[split], split, stats.shards[split])
    return stats


def _drop_rows(path: Path, drop: np.ndarray) -> dict:
    """Rewrite a part without the rows marked in ``drop``; return its new counts."""
    import pyarrow.compute as pc  # the merge's alone: a spawned worker's start-up skips it

    table = pq.read_table(path).filter(pa.array(~drop))
    part = _Part(path.name)
    sizes = pc.binary_length(table.column("text")).to_pylist()
    for domain, size in zip(table.column("domain").to_pylist(), sizes, strict=True):
        part.documents += 1
        part.bytes += size
        part.domains[domain] += 1
        part.domain_bytes[domain] += size
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=_BATCH)
    return part.to_json(sha256_file(path))


def check_not_empty(stats: CorpusStats, cfg: PrepareConfig) -> None:
    """Refuse a corpus that leaves a split empty, before any file is moved into place."""
    kept = sum(stats.split_documents(s) for s in SPLITS)
    summary = (
        f"{stats.documents_read} documents read, {stats.too_short_removed} shorter than "
        f"prepare.min_chars={cfg.min_chars}, {stats.duplicates_removed} duplicates"
    )
    if kept == 0:
        raise DataError(f"empty corpus: no document left ({summary})")
    fixes = "add data or raise the fractions (prepare.split)"
    if cfg.source == "files" and cfg.files.split_txt == "none":
        fixes += (
            "; for a few long .txt files, set prepare.files.split_txt: paragraphs to cut them "
            "into documents"
        )
    for name in SPLITS:
        if stats.split_documents(name) == 0:
            raise DataError(
                f"split {name!r} is empty: {kept} documents are too few for the split fractions "
                f"{cfg.split.model_dump()} ({summary}); {fixes}"
            )
