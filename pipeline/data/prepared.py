"""The prepared splits on disk: numbered Parquet shards and one manifest per split.

``data/prepared/<split>/`` holds ``<split>-00000.parquet``, ``<split>-00001.parquet``, ... (columns
``text`` and ``domain``, documents in source order) and ``manifest.json``::

    {"format": "moe-pipeline-documents/1", "split": "train", "documents": 29000, "bytes": 7700000,
     "shards": [{"file": "train-00000.parquet", "documents": 29000, "bytes": 7700000,
                 "sha256": "..."}]}

``bytes`` counts UTF-8 text. The prepare stage writes it (:mod:`pipeline.data.corpus`); readers
open a split with :func:`read_prepared` and stream it with :func:`iter_batches`, which checks
each shard against its recorded SHA-256 before reading it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.documents import DataError
from pipeline.data.manifests import MANIFEST, load_manifest
from pipeline.io import atomic_path, sha256_file, write_json

FORMAT = "moe-pipeline-documents/1"
SCHEMA = pa.schema([("text", pa.string()), ("domain", pa.string())])


def documents_table(texts_utf8: Sequence[bytes], domains: Sequence[str]) -> pa.Table:
    """The documents as a table of :data:`SCHEMA`, from their texts' UTF-8 bytes (which the
    prepare stage has already formed: it hashes them).

    The columns are built from the bytes and their offsets rather than by ``pa.array``, which
    imports pandas (~0.2 s) the first time it converts a Python list: a cost every spawned
    prepare worker would pay. A column of 2 GiB or more, past a string array's 32-bit offsets,
    goes through ``pa.array``, which splits it into chunks."""
    domains_utf8 = [d.encode("utf-8") for d in domains]
    return pa.Table.from_arrays([_strings(texts_utf8), _strings(domains_utf8)], schema=SCHEMA)


STRING_ARRAY_BYTES = 2**31 - 1  # the most a string array's int32 offsets address


def _strings(encoded: Sequence[bytes]) -> pa.Array | pa.ChunkedArray:
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    if offsets[-1] > STRING_ARRAY_BYTES:
        return pa.array(encoded, pa.string())
    return pa.StringArray.from_buffers(
        len(encoded), pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(b"".join(encoded))
    )


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.parquet"


@dataclass(frozen=True)
class DocumentShard:
    path: Path
    documents: int
    bytes: int
    sha256: str

    def to_json(self) -> dict:
        return {
            "file": self.path.name,
            "documents": self.documents,
            "bytes": self.bytes,
            "sha256": self.sha256,
        }

    def verify(self) -> None:
        """Refuse a shard that is missing or not the one prepare wrote."""
        if not self.path.is_file():
            raise DataError(
                f"{self.path}: listed in {self.path.parent / MANIFEST} but missing; re-run the "
                "prepare stage"
            )
        if sha256_file(self.path) != self.sha256:
            raise DataError(
                f"{self.path}: SHA-256 differs from the one prepare recorded in "
                f"{self.path.parent / MANIFEST} (altered or replaced); re-run the prepare stage"
            )


@dataclass(frozen=True)
class PreparedSplit:
    directory: Path
    split: str
    documents: int
    bytes: int
    shards: tuple[DocumentShard, ...]
    sha256: str  # of the manifest, which names every shard's digest: the split's identity


def write_manifest(directory: Path, split: str, shards: Sequence[DocumentShard]) -> None:
    write_json(
        directory / MANIFEST,
        {
            "format": FORMAT,
            "split": split,
            "documents": sum(s.documents for s in shards),
            "bytes": sum(s.bytes for s in shards),
            "shards": [s.to_json() for s in shards],
        },
    )


def write_prepared(
    directory: Path, split: str, shards: Sequence[Sequence[tuple[str, str]]]
) -> PreparedSplit:
    """A prepared split from ``(text, domain)`` documents, shard by shard (tests and tools;
    the prepare stage writes its shards in parallel, :mod:`pipeline.data.corpus`)."""
    written = []
    for index, documents in enumerate(shards):
        path = directory / shard_name(split, index)
        texts_utf8 = [text.encode("utf-8") for text, _ in documents]
        table = documents_table(texts_utf8, [d for _, d in documents])
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp, compression="zstd")
        size = sum(map(len, texts_utf8))
        written.append(DocumentShard(path, len(texts_utf8), size, sha256_file(path)))
    write_manifest(directory, split, written)
    return read_prepared(directory)


def read_prepared(directory: Path) -> PreparedSplit:
    """A prepared split's manifest (the shards are checked as they are read)."""
    raw = load_manifest(directory, FORMAT, ".parquet", "prepare", DataError)
    shards = tuple(
        DocumentShard(directory / s["file"], s["documents"], s["bytes"], s["sha256"])
        for s in raw["shards"]
    )
    return PreparedSplit(
        directory,
        raw["split"],
        raw["documents"],
        raw["bytes"],
        shards,
        sha256_file(directory / MANIFEST),
    )


def iter_batches(
    shards: Sequence[DocumentShard], batch_size: int, columns: Sequence[str] = ("text",)
) -> Iterator[pa.RecordBatch]:
    """Record batches of at most ``batch_size`` documents, shard after shard, each shard
    checked against its digest first."""
    for shard in shards:
        shard.verify()
        yield from pq.ParquetFile(shard.path).iter_batches(
            columns=list(columns), batch_size=batch_size
        )


def iter_texts(split: PreparedSplit, batch_size: int = 1024) -> Iterator[list[str]]:
    """The split's texts in order, as lists of at most ``batch_size``."""
    for batch in iter_batches(split.shards, batch_size):
        yield batch.column(0).to_pylist()
