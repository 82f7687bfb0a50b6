"""The tiny training set-up of tests/train and the process launcher, shared here (loaded by
path: the tests directory is not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_TINY = _load("parallel_tiny", Path(__file__).parents[1] / "train" / "tiny.py")
_LAUNCH = _load("parallel_launch", Path(__file__).parent / "launch.py")


@pytest.fixture(scope="session")
def tiny():
    return _TINY


@pytest.fixture(scope="session")
def launcher():
    return _LAUNCH
