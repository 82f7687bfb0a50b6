"""The tiny training set-up of tests/train, shared here (loaded by path)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "parallel_tiny", Path(__file__).parents[1] / "train" / "tiny.py"
)
_TINY = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_TINY)


@pytest.fixture(scope="session")
def tiny():
    return _TINY
