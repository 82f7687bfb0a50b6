"""Where raw documents come from: the synthetic grammar, a Hugging Face dataset, or local files.

Each source yields :class:`Document` (text plus where it came from, for error messages) lazily,
so a corpus larger than memory streams through the prepare stage.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import FilesSource, HFSource, PrepareConfig, SyntheticSource
from pipeline.errors import PipelineError

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


class DataError(PipelineError):
    """Input data is missing, malformed or not what the params say it is."""


@dataclass(frozen=True)
class Document:
    text: str
    origin: str  # "file.jsonl:12", "synthetic:3", "hf:name/split:5" — for messages only


def iter_documents(cfg: PrepareConfig, seed: int) -> Iterator[Document]:
    """Documents of the configured source, in a deterministic order."""
    if cfg.source == "synthetic":
        return _synthetic(cfg.synthetic, seed)
    if cfg.source == "hf":
        return _huggingface(cfg.hf)
    return _files(cfg.files)


def _synthetic(cfg: SyntheticSource, seed: int) -> Iterator[Document]:
    from pipeline.data.synthetic import generate_documents

    for index, text in enumerate(generate_documents(seed, cfg.size_mb, cfg.episode_share)):
        yield Document(text, f"synthetic:{index}")


# --------------------------------------------------------------------------- Hugging Face
def _huggingface(cfg: HFSource) -> Iterator[Document]:
    dataset = _load_hf(cfg)
    columns = dataset.column_names or []
    if columns and cfg.text_field not in columns:
        raise DataError(
            f"dataset {cfg.name!r}: no text field {cfg.text_field!r} "
            f"(prepare.hf.text_field); its columns are {columns}"
        )
    for index, row in enumerate(dataset):
        if cfg.max_documents is not None and index >= cfg.max_documents:
            return
        yield Document(
            _text_of(row, cfg.text_field, f"{cfg.name}[{index}]"), f"hf:{cfg.name}:{index}"
        )


def _load_hf(cfg: HFSource):
    import datasets

    try:
        return datasets.load_dataset(cfg.name, cfg.config, split=cfg.split, streaming=cfg.streaming)
    except Exception as exc:  # the hub raises many types; all mean "could not get it"
        offline = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("HF_DATASETS_OFFLINE")
        hint = (
            "this machine is offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set) and the dataset is "
            "not cached"
            if offline
            else "the hub may be unreachable"
        )
        raise DataError(
            f"could not load Hugging Face dataset {cfg.name!r} (config {cfg.config!r}, split "
            f"{cfg.split!r}): {type(exc).__name__}: {exc}\n  {hint}. To use local files instead, "
            "set prepare.source: files and prepare.files.glob: 'path/*.parquet' (or .jsonl/.txt), "
            "or point prepare.hf.name at a local directory in the hub's layout."
        ) from exc


def _text_of(row: dict, field: str, where: str) -> str:
    if field not in row:
        raise DataError(f"{where}: no field {field!r}; available fields: {sorted(row)}")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    return value


# --------------------------------------------------------------------------- local files
def _files(cfg: FilesSource) -> Iterator[Document]:
    paths = sorted(glob.glob(cfg.glob, recursive=True))
    if not paths:
        raise DataError(f"prepare.files.glob {cfg.glob!r} matched no file")
    unsupported = [p for p in paths if not p.endswith(FILE_SUFFIXES)]
    if unsupported:
        raise DataError(
            f"prepare.files.glob {cfg.glob!r} matched unsupported files {unsupported[:3]}; "
            f"expected {', '.join(FILE_SUFFIXES)}"
        )
    for path in paths:
        reader = {".txt": _read_txt, ".jsonl": _read_jsonl, ".parquet": _read_parquet}
        yield from reader[Path(path).suffix](Path(path), cfg.text_field)


def _decode(data: bytes, where: str, base_offset: int = 0) -> str:
    """Strict UTF-8: report the exact byte offset rather than mangling the text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = base_offset + exc.start
        raise DataError(
            f"{where}: invalid UTF-8 at byte offset {offset} "
            f"(bytes {data[exc.start : exc.start + 4]!r}); re-encode the file as UTF-8"
        ) from None


def _read_txt(path: Path, _field: str) -> Iterator[Document]:
    """A ``.txt`` file is one document."""
    yield Document(_decode(path.read_bytes(), str(path)), str(path))


def _read_jsonl(path: Path, field: str) -> Iterator[Document]:
    offset = 0
    with open(path, "rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            where = f"{path}:{line_no}"
            line = _decode(raw, where, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield Document(_text_of(row, field, where), where)


def _read_parquet(path: Path, field: str) -> Iterator[Document]:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if field not in columns:
        raise DataError(
            f"{path}: no column {field!r} (prepare.files.text_field); its columns are {columns}"
        )
    row = 0
    for batch in parquet.iter_batches(columns=[field], batch_size=4096):
        for text in batch.column(0).to_pylist():
            if not isinstance(text, str):
                raise DataError(f"{path}: row {row}: {field!r} is {text!r}, expected a string")
            yield Document(text, f"{path}:row {row}")
            row += 1
