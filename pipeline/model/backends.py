"""Which implementation computes the MoE layer: the one place where ``auto`` is decided.

``train.runtime.backend`` (a runtime choice, not part of the model spec) names one of

- ``reference``: per-expert loops in plain autograd (:mod:`pipeline.ops.reference`), the oracle;
- ``torch``: sort + grouped GEMMs (:mod:`pipeline.ops.torch_dispatch`,
  :mod:`pipeline.ops.torch_experts`), the CPU path;
- ``triton``: fused kernels (:mod:`pipeline.ops.triton_dispatch`,
  :mod:`pipeline.ops.triton_experts`, and the fused router :mod:`pipeline.ops.triton_routing`),
  the GPU path;
- ``auto``: decided per call by the activations' device: ``triton`` on CUDA when Triton is
  importable, else ``torch``.

The router, the dispatcher, the experts and the combine all follow the one resolved name, and
which one ran is logged once per (request, device).
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch

log = logging.getLogger(__name__)

BACKENDS = ("reference", "torch", "triton")


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def check_backend(name: str) -> str:
    """``name`` when it can run here (``auto`` always can); a clear error otherwise."""
    if name != "auto" and name not in BACKENDS:
        raise ValueError(f"unknown MoE backend {name!r}; expected auto or one of {BACKENDS}")
    if name == "triton" and not triton_available():
        raise ValueError("MoE backend 'triton' needs the triton package (pip install triton)")
    return name


def resolve_backend(requested: str, device: torch.device) -> str:
    """The concrete backend for activations on ``device``."""
    if requested != "auto":
        resolved = requested
    elif device.type == "cuda" and triton_available():
        resolved = "triton"
    else:
        resolved = "torch"
    if not torch.compiler.is_compiling():  # a logging call would break a compiled graph
        _announce(requested, resolved, device.type)
    return resolved


@functools.cache
def _announce(requested: str, resolved: str, device: str) -> None:
    log.info(
        "MoE backend: %s on %s tensors (train.runtime.backend %r): router, dispatch, experts "
        "and combine",
        resolved,
        device,
        requested,
    )
