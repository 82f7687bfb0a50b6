"""Local files as documents (``prepare.source: files``): ``.txt``, ``.jsonl`` and ``.parquet``.

Each file is read in bounded pieces: a JSONL line or a whole ``.txt`` file longer than
``prepare.max_document_mb`` is refused before it is read in full, and ``split_txt: paragraphs``
streams a ``.txt`` file through :func:`~pipeline.data.text_split.cut_documents`. Every document
carries a domain label (``prepare.files.domain``): the first directory under the glob's root,
the file's path under it, or a field of the record.

Bad input is refused with the file, line or byte offset and the fix, among them: a glob that
matches nothing, an empty file among good ones, invalid UTF-8, a line that is not JSON, a
record or Parquet file without the configured field.
"""

from __future__ import annotations

import codecs
import glob
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.config import FilesSource
from pipeline.data.documents import DataError, Document
from pipeline.data.text_split import cut_documents

FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
_PIECE = 1 << 20  # bytes read at a time from a .txt file
_MAGIC = frozenset("*?[")


@dataclass(frozen=True)
class InputFile:
    path: str
    size: int
    mtime_ns: int  # with the size, tells a shard job's input from a file changed since

    def key(self) -> list:
        return [self.path, self.size, self.mtime_ns]


def list_files(cfg: FilesSource) -> list[InputFile]:
    """The files the glob matches, sorted; refuses a glob that matches nothing, unsupported
    suffixes, empty files, and ``domain: field:`` on ``.txt`` files (they have no fields)."""
    paths = sorted(p for p in glob.glob(cfg.glob, recursive=True) if Path(p).is_file())
    if not paths:
        raise DataError(
            f"prepare.files.glob {cfg.glob!r} matched no file (relative to the directory the "
            "stage runs in, the repository root); check the pattern, '**' needs recursive dirs"
        )
    unsupported = [p for p in paths if not p.endswith(FILE_SUFFIXES)]
    if unsupported:
        raise DataError(
            f"prepare.files.glob {cfg.glob!r} matched unsupported files {unsupported[:3]}; "
            f"expected {', '.join(FILE_SUFFIXES)}: narrow the glob"
        )
    files = []
    for path in paths:
        stat = Path(path).stat()
        if stat.st_size == 0:
            raise DataError(
                f"{path}: empty file (0 bytes) among the {len(paths)} files prepare.files.glob "
                "matched; remove it or narrow the glob"
            )
        files.append(InputFile(path, stat.st_size, stat.st_mtime_ns))
    texts = [f.path for f in files if f.path.endswith(".txt")]
    if cfg.domain.startswith("field:") and texts:
        raise DataError(
            f"prepare.files.domain = {cfg.domain!r}, but {texts[0]} is a .txt file, which has no "
            "fields: use domain: directory or file, or narrow the glob"
        )
    return files


def glob_root(pattern: str) -> Path:
    """The directory the glob's fixed prefix names (``corpus`` for ``corpus/**/*.txt``)."""
    parts = Path(pattern).parts
    fixed: list[str] = []
    for part in parts[:-1]:
        if _MAGIC & set(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def path_domain(cfg: FilesSource, path: str) -> str:
    """The domain label of every document of ``path`` (``directory`` or ``file`` mode)."""
    root = glob_root(cfg.glob)
    relative = Path(path).relative_to(root)
    if cfg.domain == "file":
        return relative.as_posix()
    return relative.parts[0] if len(relative.parts) > 1 else (root.name or ".")


def read_file(
    cfg: FilesSource, path: str, max_bytes: int, byte_range: tuple[int, int] | None = None
) -> Iterator[Document]:
    """The documents of one file; a file that yields none is refused. With ``byte_range``
    ``(start, end)``, only the lines of a ``.jsonl`` file that start in ``[start, end)``: one
    task of a file cut into several (:func:`pipeline.data.sources.plan_units`), where an empty
    range is no error."""
    domain = None if cfg.domain.startswith("field:") else path_domain(cfg, path)
    suffix = Path(path).suffix
    if suffix == ".txt":
        documents = _read_txt(Path(path), cfg, domain, max_bytes)
    elif suffix == ".jsonl":
        documents = _read_jsonl(Path(path), cfg, domain, max_bytes, byte_range)
    else:
        documents = _read_parquet(Path(path), cfg, domain)
    count = 0
    for document in documents:
        count += 1
        yield document
    if count == 0 and byte_range is None:
        raise no_document(cfg, path)


def no_document(cfg: FilesSource, path: str) -> DataError:
    """The refusal of a file that holds no document (a cut file's is checked by the merge,
    over all of its ranges)."""
    return DataError(
        f"{path}: holds no document (an empty shard among the files of prepare.files.glob "
        f"{cfg.glob!r}); remove it or narrow the glob"
    )


def _invalid_utf8(where: str, offset: int, data: bytes) -> DataError:
    return DataError(
        f"{where}: invalid UTF-8 at byte offset {offset} (bytes {data[:4]!r}); re-encode the "
        "file as UTF-8"
    )


def _decode(data: bytes, where: str, base_offset: int = 0) -> str:
    """Strict UTF-8: report the exact byte offset rather than mangling the text."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid_utf8(where, base_offset + exc.start, data[exc.start :]) from None


def _text_pieces(path: Path) -> Iterator[str]:
    """The file's text in pieces of about ``_PIECE`` bytes, strictly decoded."""
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset = 0  # bytes of the file passed to the decoder so far
    with open(path, "rb") as handle:
        while True:
            data = handle.read(_PIECE)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last piece
            try:
                yield decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                raise _invalid_utf8(
                    str(path), offset - pending + exc.start, exc.object[exc.start :]
                ) from None
            offset += len(data)
            if not data:
                return


def _read_txt(path: Path, cfg: FilesSource, domain: str, max_bytes: int) -> Iterator[Document]:
    if cfg.split_txt == "paragraphs":
        for index, text in enumerate(cut_documents(_text_pieces(path), cfg.document_chars)):
            yield Document(text, f"{path}: document {index}", domain)
        return
    size = path.stat().st_size
    if size > max_bytes:
        raise DataError(
            f"{path}: {size} bytes, more than prepare.max_document_mb = {max_bytes / 1e6:g} MB "
            "for one document (a .txt file is one document); set prepare.files.split_txt: "
            "paragraphs to cut it into documents, or raise the limit"
        )
    text = _decode(path.read_bytes(), str(path))
    if text.strip():
        yield Document(text, str(path), domain)


def _read_jsonl(
    path: Path,
    cfg: FilesSource,
    domain: str | None,
    max_bytes: int,
    byte_range: tuple[int, int] | None = None,
) -> Iterator[Document]:
    start, end = byte_range or (0, math.inf)
    with open(path, "rb") as handle:
        offset = _first_line_from(handle, start)
        # Line numbers count from the file's start, which a later range has not read: there
        # the byte offset names the line.
        line_no = 0 if start == 0 else None
        while offset < end and (raw := handle.readline(max_bytes + 1)):
            if line_no is None:
                where = f"{path}: the line at byte offset {offset}"
            else:
                line_no += 1
                where = f"{path}:{line_no}"
            if len(raw) > max_bytes:
                raise DataError(
                    f"{where}: line longer than prepare.max_document_mb = {max_bytes / 1e6:g} MB "
                    f"(starts at byte offset {offset}); split the record or raise the limit"
                )
            line = _decode(raw, where, offset)
            offset += len(raw)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(
                    f"{where}: not valid JSON ({exc.msg} at column {exc.colno}, byte offset "
                    f"{offset - len(raw)} of the file); fix or remove the line"
                ) from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield Document(
                text_of(row, cfg.text_field, where, "prepare.files.text_field"),
                where,
                domain or _field_domain(row, cfg.domain, where),
            )


def _first_line_from(handle: BinaryIO, start: int) -> int:
    """Seek ``handle`` to the first line that starts at or after byte ``start`` (a line starts
    after a newline): the line that crosses ``start`` belongs to the range before. Reads in
    bounded pieces, so a long line costs no memory. Returns the offset."""
    if start == 0:
        return 0
    handle.seek(start - 1)
    while piece := handle.readline(_PIECE):
        if piece.endswith(b"\n"):
            break
    return handle.tell()


def _read_parquet(path: Path, cfg: FilesSource, domain: str | None) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    wanted = [cfg.text_field] if domain is not None else [cfg.text_field, cfg.domain[6:]]
    try:
        parquet = pq.ParquetFile(path)
        columns = parquet.schema_arrow.names
        for name, key in zip(wanted, ("text_field", "domain"), strict=False):
            if name not in columns:
                raise DataError(
                    f"{path}: no column {name!r} (prepare.files.{key}); its columns are "
                    f"{columns}: set prepare.files.{key} to one of them"
                )
        row = 0
        for batch in parquet.iter_batches(columns=wanted, batch_size=4096):
            labels = batch.column(1).to_pylist() if domain is None else None
            for i, text in enumerate(batch.column(0).to_pylist()):
                if not isinstance(text, str):
                    raise DataError(
                        f"{path}: row {row}: {cfg.text_field!r} is {text!r}, expected a string"
                    )
                label = domain if labels is None else _label(labels[i], f"{path}: row {row}")
                yield Document(text, f"{path}: row {row}", label)
                row += 1
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc}); re-create it") from None


def text_of(row: dict, field: str, where: str, key: str) -> str:
    """``row[field]`` as a string, or a :class:`DataError` naming the fields there are."""
    if field not in row:
        raise DataError(f"{where}: no field {field!r}; available fields: {sorted(row)} (set {key})")
    value = row[field]
    if not isinstance(value, str):
        raise DataError(f"{where}: field {field!r} is {type(value).__name__}, expected a string")
    return value


def _field_domain(row: dict, mode: str, where: str) -> str:
    return label_of(row, mode.removeprefix("field:"), where, f"prepare.files.domain = {mode!r}")


def label_of(row: dict, field: str, where: str, key: str) -> str:
    """``row[field]`` as a domain label (a string, or an integer written as one)."""
    if field not in row:
        raise DataError(f"{where}: no field {field!r} ({key}); available fields: {sorted(row)}")
    return _label(row[field], where)


def _label(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: domain label {value!r} is not a string or an integer")
