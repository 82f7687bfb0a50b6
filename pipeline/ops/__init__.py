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
- ``triton``: fused GPU kernels, not implemented yet.
- ``auto``: the fastest available; today always ``torch``.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pipeline.ops.reference import reference_experts
from pipeline.ops.sorted_experts import sorted_experts

log = logging.getLogger(__name__)

ExpertsFn = Callable[..., torch.Tensor]

_REGISTRY: dict[str, ExpertsFn] = {"reference": reference_experts, "torch": sorted_experts}
_NOT_YET = {"triton": "the 'triton' MoE backend is not implemented yet; use 'torch' or 'auto'"}


@dataclass(frozen=True)
class Backend:
    """A named experts function; call it like the function."""

    name: str
    experts: ExpertsFn

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.experts(*args)


def available_backends() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def get_backend(name: str) -> Backend:
    """Resolve a ``train.model.moe.backend`` value; ``auto`` picks the best available."""
    resolved = "torch" if name == "auto" else name
    if resolved in _NOT_YET:
        raise NotImplementedError(_NOT_YET[resolved])
    if resolved not in _REGISTRY:
        raise ValueError(
            f"unknown MoE backend {name!r}; expected auto or one of {available_backends()}"
        )
    _announce(name, resolved)
    return Backend(resolved, _REGISTRY[resolved])


@functools.cache
def _announce(requested: str, resolved: str) -> None:
    log.info("MoE expert backend: %s (requested %r)", resolved, requested)
