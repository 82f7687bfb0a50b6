"""Expert-compute backends behind one interface: dispatch → SwiGLU experts → weighted combine.

A backend is a function

    experts(x_TD, weights_TK, ids_TK, w1_EFD, w3_EFD, w2_EDF) -> y_TD

with ``y[t] = Σ_k weights[t, k] · SwiGLU_{ids[t, k]}(x[t])``, where an id of -1 marks an empty
slot (dropped by capacity, or unused by expert-choice routing) that contributes nothing. Routing
is decided before the call: backends only move rows and multiply matrices, so the MoE layer never
knows which one ran. Expert weights are stacked: ``w1, w3 (E, F, D)``, ``w2 (E, D, F)``, i.e.
``w1[e]`` is exactly the ``nn.Linear(D, F).weight`` of expert e (HF Mixtral's per-expert ``w1``).

- ``reference``: a per-expert Python loop (:mod:`pipeline.ops.reference`), the test oracle.
- ``torch``: sort + grouped GEMM + index_add (:mod:`pipeline.ops.sorted_experts`).
- ``triton``: fused Triton kernels (:mod:`pipeline.ops.triton_experts`), the GPU fast path. Its
  module is imported on first use, not here: Triton reads ``TRITON_INTERPRET`` when kernels are
  defined, so CPU runs (the interpreter, for tests) must set it before that first use.
- ``auto``: decided per call by the activations' device: ``triton`` on CUDA when triton is
  importable, else ``torch``. Which one ran is logged once per (device, backend).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.ops.reference import reference_experts
from pipeline.ops.sorted_experts import sorted_experts

log = logging.getLogger(__name__)

ExpertsFn = Callable[..., torch.Tensor]


def _triton_experts(*args: torch.Tensor) -> torch.Tensor:
    """Imports the kernels on first call (see the module docstring for why not earlier)."""
    from pipeline.ops.triton_experts import triton_experts

    return triton_experts(*args)


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def _auto_experts(x_TD: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
    resolved = "triton" if x_TD.is_cuda and triton_available() else "torch"
    _announce("auto", f"{resolved} on {x_TD.device.type}")
    return _REGISTRY[resolved](x_TD, *rest)


_REGISTRY: dict[str, ExpertsFn] = {
    "reference": reference_experts,
    "torch": sorted_experts,
    "triton": _triton_experts,
    "auto": _auto_experts,
}


@dataclass(frozen=True)
class Backend:
    """A named experts function; call it like the function."""

    name: str
    experts: ExpertsFn

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.experts(*args)


def available_backends() -> tuple[str, ...]:
    """The concrete backends usable here (``auto`` chooses among them)."""
    return tuple(n for n in _REGISTRY if n != "auto" and (n != "triton" or triton_available()))


def get_backend(name: str) -> Backend:
    """Resolve a ``train.model.moe.backend`` value; ``auto`` picks per call (see above)."""
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown MoE backend {name!r}; expected auto or one of {available_backends()}"
        )
    if name == "triton" and not triton_available():
        raise ValueError("MoE backend 'triton' needs the triton package (pip install triton)")
    if name != "auto":
        _announce(name, name)
    return Backend(name, _REGISTRY[name])


@functools.cache
def _announce(requested: str, resolved: str) -> None:
    log.info("MoE expert backend: %s (requested %r)", resolved, requested)
