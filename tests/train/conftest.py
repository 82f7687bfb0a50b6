"""Fixtures of the training tests: the tiny set-up (tiny.py) and its token files."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

HERE = Path(__file__).parent


def _load_tiny() -> ModuleType:
    spec = importlib.util.spec_from_file_location("train_tiny", HERE / "tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TINY = _load_tiny()


@pytest.fixture(scope="session")
def tiny() -> ModuleType:
    return _TINY


@pytest.fixture
def corpus(tmp_path):
    """A tiny tokenised corpus under ``tmp_path``; returns its :class:`Paths`."""
    return _TINY.write_tokens(tmp_path)
