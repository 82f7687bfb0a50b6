"""The tiny config's loss curve matches the committed golden curve (torchtitan's habit).

Tolerance: 1e-4 relative per step. On one machine a run is bit-exact (asserted below by running
twice); across CPUs, BLAS builds and thread counts the fp32 summation order changes, and over 20
steps that drift stays orders of magnitude below what a real change (init, loss, data order,
learning rate) produces. Regenerate with ``python tests/train/make_golden.py`` when a change is
meant to move the curve, and say so in the commit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

ASSET = Path(__file__).parents[1] / "assets" / "golden_loss_tiny.json"


@pytest.fixture(scope="module")
def golden(tiny):
    record = json.loads(ASSET.read_text())
    assert record["params"] == tiny.merge(tiny.TINY, {"train": tiny.GOLDEN}), (
        "tiny.py's config changed since the golden curve was made: regenerate it"
    )
    return record["losses"]


def test_loss_curve_matches_the_golden_curve_and_is_reproducible(tmp_path, tiny, golden):
    first = tiny.losses(tiny.run(tiny.write_tokens(tmp_path / "a"), tiny.params(**tiny.GOLDEN)))
    second = tiny.losses(tiny.run(tiny.write_tokens(tmp_path / "b"), tiny.params(**tiny.GOLDEN)))
    assert first == second  # same params on the same machine: bit-identical
    assert len(first) == len(golden) == tiny.GOLDEN["max_steps"]
    assert first == pytest.approx(golden, rel=1e-4)


def test_golden_curve_shows_learning(golden, tiny):
    """Guards the asset itself: a curve from a broken trainer would be useless as a reference."""
    assert golden[0] == pytest.approx(math.log(tiny.VOCAB), rel=0.15)  # ~uniform at init
    assert golden[-1] < golden[0] - 0.5
