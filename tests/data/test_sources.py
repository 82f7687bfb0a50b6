"""Document sources: local files in each format, a local dataset in the hub's layout, bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import FilesSource, HFSource, PrepareConfig
from pipeline.data.sources import DataError, iter_documents


def files_config(pattern: str, field: str = "text") -> PrepareConfig:
    return PrepareConfig(source="files", files=FilesSource(glob=pattern, text_field=field))


def texts(cfg: PrepareConfig) -> list[str]:
    return [doc.text for doc in iter_documents(cfg, seed=0)]


def test_txt_jsonl_parquet_in_sorted_path_order(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file\nsecond line", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "json one"}) + "\n\n" + json.dumps({"body": "json two"}) + "\n"
    )
    pq.write_table(pa.table({"body": ["pq one", "pq two"], "x": [1, 2]}), tmp_path / "c.parquet")
    got = texts(files_config(str(tmp_path / "*"), field="body"))
    assert got == ["plain text file\nsecond line", "json one", "json two", "pq one", "pq two"]


def test_glob_without_match(tmp_path):
    with pytest.raises(DataError, match=r"matched no file"):
        texts(files_config(str(tmp_path / "*.jsonl")))


def test_unsupported_suffix(tmp_path):
    (tmp_path / "data.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"unsupported files.*data.csv"):
        texts(files_config(str(tmp_path / "*")))


def test_missing_json_field_names_file_line_and_fields(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"content": "no"}) + "\n")
    with pytest.raises(
        DataError, match=r"d.jsonl:2: no field 'text'; available fields: \['content'\]"
    ):
        texts(files_config(str(path)))


def test_missing_parquet_column(tmp_path):
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "d.parquet")
    with pytest.raises(DataError, match=r"no column 'text'.*\['body'\]"):
        texts(files_config(str(tmp_path / "d.parquet")))


def test_invalid_json_line(tmp_path):
    (tmp_path / "d.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        texts(files_config(str(tmp_path / "d.jsonl")))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_non_utf8_reports_file_and_byte_offset(tmp_path, suffix):
    good = b'{"text": "fine"}\n' if suffix == ".jsonl" else b"fine text "
    bad = b'{"text": "caf\xe9"}\n' if suffix == ".jsonl" else b"caf\xe9"
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(good + bad)
    offset = len(good) + bad.index(b"\xe9")
    with pytest.raises(DataError, match=rf"invalid UTF-8 at byte offset {offset}\b"):
        texts(files_config(str(path)))


def write_hub_layout(root, rows: list[dict]) -> None:
    """The layout `huggingface-cli download` leaves: data/<split>-00000-of-00001.parquet."""
    (root / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), root / "data" / "train-00000-of-00001.parquet")


@pytest.mark.parametrize("streaming", [False, True])
def test_hf_source_reads_a_local_hub_layout(tmp_path, streaming):
    rows = [{"content": f"document number {i}", "id": i} for i in range(5)]
    write_hub_layout(tmp_path / "ds", rows)
    cfg = PrepareConfig(
        source="hf",
        hf=HFSource(
            name=str(tmp_path / "ds"), text_field="content", streaming=streaming, max_documents=4
        ),
    )
    assert texts(cfg) == [f"document number {i}" for i in range(4)]


def test_hf_source_missing_field(tmp_path):
    write_hub_layout(tmp_path / "ds", [{"content": "x"}])
    cfg = PrepareConfig(source="hf", hf=HFSource(name=str(tmp_path / "ds")))
    with pytest.raises(DataError, match=r"no text field 'text'.*\['content'\]"):
        texts(cfg)


def test_hf_source_offline_says_how_to_use_local_files(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    cfg = PrepareConfig(source="hf", hf=HFSource(name="someone/not-cached-dataset"))
    with pytest.raises(DataError) as info:
        texts(cfg)
    message = str(info.value)
    assert "someone/not-cached-dataset" in message and "offline" in message
    assert "prepare.source: files" in message
