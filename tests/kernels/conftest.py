"""Kernel tests: CPU runs under the Triton interpreter, ``gpu``-marked runs on CUDA.

``TRITON_INTERPRET`` is set by the root ``tests/conftest.py`` (only when no CUDA device is
present), before any test module can import :mod:`pipeline.kernels`; on a GPU machine the
``gpu`` tests run the compiled kernels and the CPU parameters skip, since compiled kernels
cannot take CPU tensors.
"""

from __future__ import annotations

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(
    params=[
        pytest.param("cpu", id="cpu"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
    ]
)
def device(request) -> torch.device:
    if request.param == "cpu" and not INTERPRET:
        pytest.skip("kernels are compiled for the GPU here; CPU runs need TRITON_INTERPRET=1")
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from threads (and a shared 2-core machine stalls on OpenMP
    barriers); restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
