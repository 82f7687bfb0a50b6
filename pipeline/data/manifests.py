"""The ``manifest.json`` every split directory holds (prepared Parquet shards, token shards)."""

from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import read_json

MANIFEST = "manifest.json"


def load_manifest(
    directory: Path, fmt: str, legacy_suffix: str, stage: str, error: type[PipelineError]
) -> dict:
    """The manifest of the split in ``directory``, in format ``fmt``. A missing one is refused
    naming the ``stage`` that writes it, and the single-file layout of earlier versions
    (``<split><legacy_suffix>`` beside the directory) by name, with the fix."""
    path = directory / MANIFEST
    if not path.is_file():
        legacy = directory.with_suffix(legacy_suffix)
        if legacy.is_file():
            raise error(
                f"{legacy}: a split in the single-file layout of earlier versions; this version "
                f"reads numbered shards listed in {path}: re-run the {stage} stage (dvc repro "
                f"{stage}, or python -m stages.{stage}) to rewrite it"
            )
        raise error(f"{path}: not found (run the {stage} stage)")
    raw = read_json(path)
    if raw.get("format") != fmt:
        raise error(f"{path}: format {raw.get('format')!r}, expected {fmt!r}")
    return raw
