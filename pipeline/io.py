"""Atomic file output and content hashing.

Every output of the pipeline goes through :func:`atomic_path`: it is written under a temporary
name in the same directory and renamed into place only once complete, so a killed stage never
leaves a half-written file that DVC or a later stage would take for a finished one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20
_FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _FILE_MODE)  # mkstemp creates 0600; outputs are ordinary files
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path | str, data: Any) -> None:
    """Stable JSON (sorted keys, 2-space indent, trailing newline) written atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_csv(path: Path | str, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """A CSV (for ``dvc plots`` and people), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_file(path: Path | str, start: int = 0, end: int | None = None) -> str:
    """SHA-256 of the file's bytes, or of its bytes ``[start, end)``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        handle.seek(start)
        while chunk := handle.read(_CHUNK if end is None else min(_CHUNK, end - handle.tell())):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_safetensors(path: Path | str) -> None:
    """Rewrite the header of the safetensors file ``path`` with its ``__metadata__`` keys sorted.

    safetensors serialises the metadata from a Rust ``HashMap``, whose iteration order is drawn
    per process: the same tensors and metadata of two keys came out in one of two byte orders,
    so the same weights got another SHA-256 on about half the saves (and DVC re-ran everything
    downstream). Sorting keeps the header's length, so the tensor data does not move."""
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        raw = handle.read(size)
        header = json.loads(raw)
        metadata = header.get("__metadata__")
        if not metadata:
            return
        header["__metadata__"] = dict(sorted(metadata.items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) != len(raw.rstrip(b" ")):
            raise ValueError(f"{path}: safetensors header not in the compact form expected")
        handle.seek(8)
        handle.write(text.ljust(size, b" "))


def unreachable(url: str, timeout_s: float) -> str | None:
    """Why ``url`` gave no answer within ``timeout_s`` seconds; ``None`` when it answered. For
    failing in seconds where a client library would retry for minutes."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s):
            return None
    except (urllib.error.URLError, OSError) as exc:
        return str(exc)
