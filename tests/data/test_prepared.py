"""``documents_table``: the prepared shards' table, built without pyarrow's pandas import."""

from __future__ import annotations

import subprocess
import sys

import pyarrow as pa
import pytest

from pipeline.data import prepared
from pipeline.data.prepared import SCHEMA, documents_table

TEXTS = ["a", "", "héllo wörld ✓", "x" * 1000, "ünïcödé"]
TEXTS_UTF8 = [t.encode("utf-8") for t in TEXTS]
DOMAINS = ["story", "story", "web", "code", "web"]


@pytest.mark.parametrize("limit", [prepared.STRING_ARRAY_BYTES, 10], ids=["buffers", "pa.array"])
def test_the_table_is_the_one_pa_table_builds(monkeypatch, limit):
    monkeypatch.setattr(prepared, "STRING_ARRAY_BYTES", limit)  # 10: the past-2-GiB fallback
    table = documents_table(TEXTS_UTF8, DOMAINS)
    assert table.schema == SCHEMA
    assert table.equals(pa.table({"text": TEXTS, "domain": DOMAINS}, schema=SCHEMA))


def test_an_empty_table():
    assert documents_table([], []).num_rows == 0


def test_building_it_does_not_import_pandas():
    code = (
        "import sys; from pipeline.data.prepared import documents_table; "
        "documents_table([b'a', b'b'], ['x', 'y']); print('pandas' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
