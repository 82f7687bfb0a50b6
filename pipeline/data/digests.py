"""A directory's record of its own files' digests, for outputs that other stages read whole.

The stage that writes the directory records ``digests.json`` (``{"files": {name: sha256}}``)
in it (:func:`record_digests`); every stage that reads it checks it first
(:func:`verify_digests`), so a damaged or swapped file stops the reader before any work:
``data/tokenizer/`` (tokenize writes it; export and evaluate read it) and ``data/benchmarks/``
(prepare writes it; evaluate reads it).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import read_json, sha256_file, write_json

DIGESTS = "digests.json"


def record_digests(directory: Path) -> None:
    """Record the SHA-256 of every file under ``directory`` (call it last, once they are
    final); names are paths relative to it."""
    names = sorted(
        p.relative_to(directory).as_posix()
        for p in directory.rglob("*")
        if p.is_file() and p != directory / DIGESTS
    )
    write_json(directory / DIGESTS, {"files": {n: sha256_file(directory / n) for n in names}})


def verify_digests(directory: Path, writer: str) -> None:
    """Refuse ``directory`` unless every file it records has the recorded SHA-256; ``writer``
    is the stage to re-run."""
    record = directory / DIGESTS
    if not record.is_file():
        raise PipelineError(
            f"{record}: not found, so {directory} cannot be checked (missing, or written by an "
            f"earlier version); re-run the {writer} stage"
        )
    for name, digest in read_json(record)["files"].items():
        path = directory / name
        if not path.is_file():
            raise PipelineError(
                f"{path}: missing (recorded in {record}); re-run the {writer} stage"
            )
        if sha256_file(path) != digest:
            raise PipelineError(
                f"{path}: SHA-256 differs from the one recorded in {record} (damaged or edited); "
                f"re-run the {writer} stage"
            )
