"""Flat token files: ``<split>.bin`` (raw little-endian uint16/uint32) + ``<split>.json`` header.

The layout is nanoGPT's (one memory-mappable array per split, documents separated by the
end-of-text token) with a header that makes the file self-checking: dtype, token count,
vocabulary size and the SHA-256 of the data. A truncated or altered file is refused on open
instead of being trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.io import atomic_path, read_json, sha256_file, write_json

FORMAT = "moe-pipeline-tokens/1"
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


class ShardError(PipelineError, ValueError):
    """A token file is missing, truncated or does not match its header."""


@dataclass(frozen=True)
class ShardHeader:
    dtype: str
    num_tokens: int
    num_documents: int
    vocab_size: int
    eot_id: int
    sha256: str

    def to_json(self) -> dict:
        return {"format": FORMAT, **self.__dict__}


def header_path(bin_path: Path) -> Path:
    return bin_path.with_suffix(".json")


class ShardWriter:
    """Streams token arrays into ``<split>.bin`` while hashing them; commits both files on close.

    Use as a context manager: on an exception nothing is left behind.
    """

    def __init__(self, bin_path: Path | str, dtype: str, vocab_size: int, eot_id: int):
        if dtype not in DTYPES:
            raise ValueError(f"token dtype {dtype!r}: expected one of {sorted(DTYPES)}")
        limit = np.iinfo(DTYPES[dtype]).max + 1
        if vocab_size > limit:
            raise ValueError(f"vocab_size {vocab_size} does not fit in {dtype} (max {limit})")
        self.bin_path = Path(bin_path)
        self.dtype = dtype
        self.vocab_size = vocab_size
        self.eot_id = eot_id
        self.num_tokens = 0
        self.num_documents = 0
        self._digest = hashlib.sha256()

    def __enter__(self) -> ShardWriter:
        self._atomic = atomic_path(self.bin_path)
        self._handle = open(self._atomic.__enter__(), "wb")  # noqa: SIM115 - closed in __exit__
        return self

    def write_documents(self, token_lists: Iterable[list[int]]) -> None:
        """Append documents, each followed by the end-of-text token."""
        flat: list[int] = []
        for ids in token_lists:
            flat.extend(ids)
            flat.append(self.eot_id)
            self.num_documents += 1
        array = np.asarray(flat, dtype=DTYPES[self.dtype])
        data = array.tobytes()
        self._handle.write(data)
        self._digest.update(data)
        self.num_tokens += array.size

    def __exit__(self, exc_type, exc, tb) -> None:
        self._handle.close()
        self._atomic.__exit__(exc_type, exc, tb)
        if exc_type is None:
            write_json(header_path(self.bin_path), self.header().to_json())

    def header(self) -> ShardHeader:
        return ShardHeader(
            dtype=self.dtype,
            num_tokens=self.num_tokens,
            num_documents=self.num_documents,
            vocab_size=self.vocab_size,
            eot_id=self.eot_id,
            sha256=self._digest.hexdigest(),
        )


def read_header(bin_path: Path | str) -> ShardHeader:
    bin_path = Path(bin_path)
    hdr_path = header_path(bin_path)
    if not hdr_path.exists():
        raise ShardError(f"{hdr_path}: token header not found (run the tokenize stage)")
    raw = read_json(hdr_path)
    if raw.get("format") != FORMAT:
        raise ShardError(f"{hdr_path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    fields = {k: raw[k] for k in ShardHeader.__dataclass_fields__ if k in raw}
    if len(fields) != len(ShardHeader.__dataclass_fields__):
        raise ShardError(
            f"{hdr_path}: header lacks keys {set(ShardHeader.__dataclass_fields__) - set(raw)}"
        )
    return ShardHeader(**fields)


def open_tokens(
    bin_path: Path | str, verify_checksum: bool = True
) -> tuple[np.memmap, ShardHeader]:
    """Memory-map a token file after checking its size (always) and SHA-256 (by default)."""
    bin_path = Path(bin_path)
    header = read_header(bin_path)
    if not bin_path.exists():
        raise ShardError(f"{bin_path}: token file not found")
    itemsize = DTYPES[header.dtype].itemsize
    expected = header.num_tokens * itemsize
    actual = bin_path.stat().st_size
    if actual != expected:
        raise ShardError(
            f"{bin_path}: {actual} bytes, header says {header.num_tokens} {header.dtype} tokens "
            f"= {expected} bytes (truncated or overwritten?)"
        )
    if header.num_tokens == 0:
        raise ShardError(f"{bin_path}: holds no tokens (empty split)")
    if verify_checksum and sha256_file(bin_path) != header.sha256:
        raise ShardError(f"{bin_path}: SHA-256 does not match its header (corrupted file)")
    return np.memmap(bin_path, dtype=DTYPES[header.dtype], mode="r"), header


def unigram_entropy(bin_path: Path | str) -> float:
    """Entropy in nats per token of the file's unigram distribution: the loss of the best model
    that ignores context, the bar a language model's loss has to clear to have learned any."""
    tokens, header = open_tokens(bin_path, verify_checksum=False)
    counts = np.bincount(tokens, minlength=header.vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
