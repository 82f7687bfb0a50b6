"""Model tests run on one thread (tests/conftest.py's ``one_thread``): tiny shapes only."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield
