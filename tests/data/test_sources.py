"""Document sources: local files in each format, .txt cut into documents, domain labels, a local
dataset in the hub's layout (streamed, several shards), units, bad input with bounded memory."""

from __future__ import annotations

import itertools
import json
import random
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import FilesSource, HFSource, PrepareConfig
from pipeline.data import files as files_module
from pipeline.data.sources import DataError, iter_documents, iter_unit, plan_units


def files_config(pattern: str, field: str = "text", **files) -> PrepareConfig:
    return PrepareConfig(source="files", files=FilesSource(glob=pattern, text_field=field, **files))


def texts(cfg: PrepareConfig) -> list[str]:
    return [doc.text for doc in iter_documents(cfg, seed=0)]


def domains(cfg: PrepareConfig) -> list[str]:
    return [doc.domain for doc in iter_documents(cfg, seed=0)]


def test_txt_jsonl_parquet_in_sorted_path_order(tmp_path):
    (tmp_path / "a.txt").write_text("plain text file\nsecond line", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"body": "json one"}) + "\n\n" + json.dumps({"body": "json two"}) + "\n"
    )
    pq.write_table(pa.table({"body": ["pq one", "pq two"], "x": [1, 2]}), tmp_path / "c.parquet")
    got = texts(files_config(str(tmp_path / "*"), field="body"))
    assert got == ["plain text file\nsecond line", "json one", "json two", "pq one", "pq two"]


def test_glob_without_match(tmp_path):
    with pytest.raises(DataError, match=r"glob '.*\*.jsonl' matched no file"):
        texts(files_config(str(tmp_path / "*.jsonl")))


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("b.jsonl", b"", r"b.jsonl: empty file \(0 bytes\) among the 3 files"),
        ("b.jsonl", b"\n\n", r"b.jsonl: holds no document \(an empty shard"),
        ("b.txt", b"  \n", r"b.txt: holds no document"),
    ],
)
def test_an_empty_shard_among_good_ones_is_named(tmp_path, name, content, message):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n")
    (tmp_path / name).write_bytes(content)
    (tmp_path / "c.jsonl").write_text(json.dumps({"text": "three"}) + "\n")
    with pytest.raises(DataError, match=message):
        texts(files_config(str(tmp_path / "*")))


def test_empty_parquet_among_good_ones_is_named(tmp_path):
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), tmp_path / "b.parquet")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "one"}) + "\n")
    with pytest.raises(DataError, match=r"b.parquet: holds no document"):
        texts(files_config(str(tmp_path / "*")))


def test_damaged_parquet_is_named(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"d.parquet: not a readable Parquet file"):
        texts(files_config(str(tmp_path / "d.parquet")))


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
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON .*byte offset 15 of the file"):
        texts(files_config(str(tmp_path / "d.jsonl")))


def test_a_50_mb_jsonl_line_is_refused_with_the_limit_in_bounded_memory(tmp_path):
    path = tmp_path / "big.jsonl"
    with open(path, "w") as handle:
        handle.write(json.dumps({"text": "fine"}) + "\n")
        handle.write('{"text": "' + "a" * 50_000_000 + '"}\n')
    cfg = files_config(str(path)).model_copy(update={"max_document_mb": 1.0})
    tracemalloc.start()
    with pytest.raises(
        DataError,
        match=r"big.jsonl:2: line longer than prepare.max_document_mb = 1 MB \(starts at byte offset 17\)",
    ):
        texts(cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5e6  # the 1 MB limit read, not the 50 MB line


def test_a_50_mb_txt_line_is_cut_in_bounded_memory_or_refused_whole(tmp_path):
    sentence = "The whale rose from the sea and the crew gave chase. "
    path = tmp_path / "one-line.txt"
    path.write_text(sentence * (50_000_000 // len(sentence)))
    with pytest.raises(
        DataError,
        match=r"one-line.txt: 499999\d\d bytes, more than prepare.max_document_mb = 16 MB.*split_txt: paragraphs",
    ):
        texts(files_config(str(path)))
    cfg = files_config(str(path), split_txt="paragraphs", document_chars=4000)
    tracemalloc.start()
    count = longest = 0
    for doc in iter_documents(cfg, seed=0):
        count += 1
        longest = max(longest, len(doc.text))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert count >= 50_000_000 // (2 * 4000) and longest <= 3 * 4000  # cuts in [n, 2n)
    assert peak < 10e6  # pieces of 1 MB, not the 50 MB file


def test_txt_paragraphs_become_documents(tmp_path):
    text = "".join(f"Paragraph {i} of the chapter, with some words in it.\n\n" for i in range(100))
    (tmp_path / "book.txt").write_text(text)
    docs = texts(files_config(str(tmp_path / "*.txt"), split_txt="paragraphs", document_chars=300))
    assert len(docs) > 10 and all(len(d.strip()) >= 300 for d in docs)
    assert " ".join(docs).split() == text.split()


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_non_utf8_reports_file_and_byte_offset(tmp_path, suffix):
    good = b'{"text": "fine"}\n' if suffix == ".jsonl" else b"fine text "
    bad = b'{"text": "caf\xe9"}\n' if suffix == ".jsonl" else b"caf\xe9"
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes(good + bad)
    offset = len(good) + bad.index(b"\xe9")
    with pytest.raises(DataError, match=rf"invalid UTF-8 at byte offset {offset}\b"):
        texts(files_config(str(path)))


@pytest.mark.parametrize("cut", [3, 4, 5, 7])
def test_non_utf8_offset_is_exact_across_read_pieces(tmp_path, monkeypatch, cut):
    """``split_txt: paragraphs`` decodes in pieces; a piece may end inside a character."""
    monkeypatch.setattr(files_module, "_PIECE", cut)
    data = "é ü ".encode() * 3 + b"\xff" + b"tail"
    (tmp_path / "x.txt").write_bytes(data)
    cfg = files_config(str(tmp_path / "x.txt"), split_txt="paragraphs")
    offset = data.index(b"\xff")
    with pytest.raises(DataError, match=rf"x.txt: invalid UTF-8 at byte offset {offset}\b"):
        texts(cfg)


def test_domain_labels_by_directory_file_or_field(tmp_path):
    (tmp_path / "corpus" / "speeches").mkdir(parents=True)
    (tmp_path / "corpus" / "fiction" / "moby").mkdir(parents=True)
    (tmp_path / "corpus" / "speeches" / "a.txt").write_text("a speech")
    (tmp_path / "corpus" / "fiction" / "moby" / "b.txt").write_text("a chapter")
    (tmp_path / "corpus" / "loose.txt").write_text("no directory")
    pattern = str(tmp_path / "corpus" / "**" / "*.txt")
    assert domains(files_config(pattern)) == ["fiction", "corpus", "speeches"]
    assert domains(files_config(pattern, domain="file")) == [
        "fiction/moby/b.txt",
        "loose.txt",
        "speeches/a.txt",
    ]
    with pytest.raises(
        DataError, match=r"domain = 'field:src', but .*\.txt file, which has no fields"
    ):
        texts(files_config(pattern, domain="field:src"))
    rows = [{"text": "x", "src": "web"}, {"text": "y", "src": 7}]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows[:1]), tmp_path / "r.parquet")
    assert domains(files_config(str(tmp_path / "r.*"), domain="field:src")) == ["web", "7", "web"]
    (tmp_path / "s.jsonl").write_text(json.dumps({"text": "z"}) + "\n")
    with pytest.raises(DataError, match=r"s.jsonl:1: no field 'src' \(prepare.files.domain"):
        texts(files_config(str(tmp_path / "s.jsonl"), domain="field:src"))


def test_files_are_grouped_into_units_by_size_in_order(tmp_path):
    for i in range(6):
        (tmp_path / f"f{i}.jsonl").write_text(json.dumps({"text": "x" * 400}) + "\n")  # ~414 B
    cfg = files_config(str(tmp_path / "*.jsonl")).model_copy(update={"shard_mb": 0.001})
    units = plan_units(cfg, seed=0)
    assert [[f[0][-8:] for f in u.key["files"]] for u in units] == [
        ["f0.jsonl", "f1.jsonl", "f2.jsonl"],
        ["f3.jsonl", "f4.jsonl", "f5.jsonl"],
    ]
    per_unit = [d.origin for u in units for d in iter_unit(cfg, 0, u)]
    assert per_unit == [d.origin for d in iter_documents(cfg, seed=0)]


def write_hub_layout(root, rows: list[dict], shards: int = 1) -> None:
    """The layout `huggingface-cli download` leaves: data/<split>-0000i-of-0000n.parquet."""
    (root / "data").mkdir(parents=True)
    per = -(-len(rows) // shards)
    for i in range(shards):
        name = f"train-{i:05d}-of-{shards:05d}.parquet"
        pq.write_table(pa.Table.from_pylist(rows[i * per : (i + 1) * per]), root / "data" / name)


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


def hf_config(root, **hf) -> PrepareConfig:
    return PrepareConfig(source="hf", hf=HFSource(name=str(root), text_field="content", **hf))


def test_hf_stream_of_several_shards_is_one_unit_per_shard(tmp_path):
    rows = [{"content": f"document {i}", "src": f"s{i % 2}"} for i in range(12)]
    write_hub_layout(tmp_path / "ds", rows, shards=3)
    cfg = hf_config(tmp_path / "ds", streaming=True, domain_field="src")
    units = plan_units(cfg, seed=0)
    assert [u.key["shard"] for u in units] == [[0, 3], [1, 3], [2, 3]]
    docs = [d for u in units for d in iter_unit(cfg, 0, u)]
    assert [d.text for d in docs] == [r["content"] for r in rows]
    assert [d.domain for d in docs] == [r["src"] for r in rows]
    plain = hf_config(tmp_path / "ds", streaming=True)
    assert set(domains(plain)) == {"ds"}  # no domain field: the dataset's name


def test_hf_stream_with_max_documents_stops_reading(tmp_path):
    """One unit, read in order, and lazily: the third shard is not Parquet at all and is never
    opened, because the first two hold the documents asked for."""
    rows = [{"content": f"document {i}"} for i in range(12)]
    write_hub_layout(tmp_path / "ds", rows, shards=3)
    (tmp_path / "ds" / "data" / "train-00002-of-00003.parquet").write_bytes(b"not parquet")
    cfg = hf_config(tmp_path / "ds", streaming=True, max_documents=7)
    assert len(plan_units(cfg, seed=0)) == 1
    assert texts(cfg) == [f"document {i}" for i in range(7)]


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


def test_a_large_jsonl_file_is_cut_into_line_aligned_ranges(tmp_path):
    """Every line is read once, by the range its first byte falls in, whatever the cut: lines
    crossing a boundary, blank lines, a range with no line start at all (inside one long line).
    A boundary right after a newline: the next test."""
    g = random.Random(0)
    rows = [{"text": "w" * g.choice([1, 5, 40, 300, 3000]) + str(i)} for i in range(200)]
    lines = [json.dumps(r) + "\n" + ("\n" if i % 17 == 0 else "") for i, r in enumerate(rows)]
    path = tmp_path / "big.jsonl"
    path.write_text("".join(lines))
    (tmp_path / "small.jsonl").write_text(json.dumps({"text": "after"}) + "\n")
    whole = [r["text"] for r in rows] + ["after"]
    size = path.stat().st_size
    for shard_bytes in (size // 2, size // 7, 2000, 3100, 4000):
        cfg = files_config(str(tmp_path / "*.jsonl")).model_copy(
            update={"shard_mb": shard_bytes / 1e6}
        )
        units = plan_units(cfg, seed=0)
        cut = [u.key["bytes"] for u in units if "bytes" in u.key]
        pieces = -(-size // shard_bytes)
        assert len(cut) == pieces and cut[0][0] == 0 and cut[-1][1] == size
        assert all(end - start <= shard_bytes for start, end in cut)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(cut))  # contiguous
        assert units[-1].key == {"files": [units[-1].key["files"][0]]}  # small.jsonl: whole
        read = [d.text for u in units for d in iter_unit(cfg, 0, u)]
        assert read == whole, f"shard_mb {shard_bytes / 1e6}"


def test_a_cut_right_after_a_newline_gives_the_next_line_to_the_next_range(tmp_path):
    lines = [json.dumps({"text": f"line {i:03d}"}) + "\n" for i in range(40)]  # equal lengths
    path = tmp_path / "even.jsonl"
    path.write_text("".join(lines))
    line = len(lines[0])
    cfg = files_config(str(path)).model_copy(update={"shard_mb": 10 * line / 1e6})
    units = plan_units(cfg, seed=0)
    assert [u.key["bytes"][0] for u in units] == [0, 10 * line, 20 * line, 30 * line]
    per_unit = [[d.text for d in iter_unit(cfg, 0, u)] for u in units]
    assert per_unit == [[f"line {i:03d}" for i in range(k, k + 10)] for k in (0, 10, 20, 30)]


def test_an_error_in_a_later_range_names_its_byte_offset(tmp_path):
    good = "".join(json.dumps({"text": f"doc {i} " + "x" * 50}) + "\n" for i in range(100))
    path = tmp_path / "c.jsonl"
    path.write_text(good + "{not json\n" + good)
    cfg = files_config(str(path)).model_copy(update={"shard_mb": len(good) / 2e6})
    units = plan_units(cfg, seed=0)
    assert len(units) == 5
    offset = len(good.encode())
    with pytest.raises(
        DataError, match=rf"c.jsonl: the line at byte offset {offset}: not valid JSON"
    ):
        for u in units:
            list(iter_unit(cfg, 0, u))
    first = list(iter_unit(cfg, 0, units[0]))  # the first range still counts lines
    assert first[0].origin == f"{path}:1"
