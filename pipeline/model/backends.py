"""Which implementation computes the MoE layer: the one place where ``auto`` is decided, and the
self-check that guards it on a GPU.

``train.runtime.backend`` (a runtime choice, not part of the model spec) names one of

- ``reference``: per-expert loops in plain autograd (:mod:`pipeline.ops.reference`), the oracle;
- ``torch``: sort + grouped GEMMs (:mod:`pipeline.ops.torch_dispatch`,
  :mod:`pipeline.ops.torch_experts`), the CPU path;
- ``triton``: fused kernels (:mod:`pipeline.ops.triton_dispatch`,
  :mod:`pipeline.ops.triton_experts`, and the fused router :mod:`pipeline.ops.triton_routing`),
  the GPU path;
- ``auto``: decided per call by the activations' device: ``triton`` on CUDA when Triton is
  importable and the self-check passes there, else ``torch``.

The router, the dispatcher, the experts and the combine all follow the one resolved name, and
which one ran is logged once per (request, device).

Self-check. The CPU tests run the kernels under Triton's interpreter, with other tile sizes and
bf16 upcast to fp32, so the compiled GPU code (bf16 ``tl.dot``, masks, pipelining) is first
exercised by whoever has a GPU. So before the first MoE forward on a CUDA device takes the
``triton`` path, :func:`self_check` runs it against the ``torch`` path on a small random problem
(:class:`CheckShape`: several GPU tiles in every dimension, none a multiple of the tile), the
whole layer (router, both router kinds, dispatch, experts, combine), forward and every gradient,
in the run's dtype, held to the tolerances the CPU tests use (:data:`FP32_TOL`,
:data:`BF16_NORM_RTOL`). Pass: ``triton``, logged with its figures. Fail or exception: ``auto``
takes ``torch`` with a warning naming the largest error and the shape; an explicit ``triton``
raises :class:`BackendCheckError`. The verdict is cached per (device, dtype, kernel version) in
the process. While ``torch.compile`` traces, nothing runs: the cached verdict is read (the
trainer checks eagerly before the first step, :mod:`pipeline.train.callbacks`), and an ``auto``
with no verdict yet takes ``torch``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.config import MoEConfig
from pipeline.errors import PipelineError
from pipeline.model.dispatch import LocalDispatcher
from pipeline.model.router import build_router

log = logging.getLogger(__name__)

BACKENDS = ("reference", "torch", "triton")
# Where ``auto`` takes triton: the devices its kernels are compiled for, which no CPU test
# exercises, hence where the self-check runs. On a CPU the kernels run only under Triton's
# interpreter, which is what the tests check.
TRITON_DEVICE_TYPES = ("cuda",)

# The tolerances of the backend tests (tests/model/test_backends.py) and of the self-check.
# fp32: the backends do the same arithmetic in another order (grouped vs per-expert GEMMs,
# routing weight applied to the hidden rows vs the outputs, summation order), so they differ by
# accumulated rounding, ~1e-6 relative for these sizes. A wrong row, weight or permutation gives
# O(1) errors, so 1e-4 relative / 1e-5 absolute catches every real bug with a wide margin.
FP32_TOL = {"rtol": 1e-4, "atol": 1e-5}
# bf16: the reference multiplies in bf16 (8-bit mantissa, eps 2^-8 ≈ 4e-3) while the torch
# backend may accumulate in fp32 (see gemm_dtype) and the kernels always do. Elementwise checks
# are meaningless for sums with cancellation (a router-gradient entry near 0 can differ by 50%
# relative), so bf16 is held to a norm-relative error: ||a - b|| / ||b|| below 2e-2, a few bf16
# epsilons accumulated, while a wrong row or weight gives an error of order 1.
BF16_NORM_RTOL = 2e-2


class BackendCheckError(PipelineError):
    """``train.runtime.backend: triton`` was requested and its self-check failed on this device."""


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


def resolve_backend(
    requested: str, device: torch.device, dtype: torch.dtype = torch.float32
) -> str:
    """The concrete backend for activations of ``dtype`` on ``device`` (see the module
    docstring: where the kernels are compiled, the ``triton`` path must pass its self-check)."""
    if torch.compiler.is_compiling():  # nothing may run or log inside a traced graph
        return _resolved_while_compiling(requested, device.type, device.index, dtype)
    resolved = _rule(requested, device.type)
    if resolved == "triton" and device.type in TRITON_DEVICE_TYPES:
        check = self_check(device, dtype)
        if not check.passed and requested == "triton":
            raise BackendCheckError(
                f"train.runtime.backend = 'triton': the self-check {check.summary()}. Use "
                "backend 'auto' (which falls back to torch) or 'torch'"
            )
        resolved = resolved if check.passed else "torch"
    _announce(requested, resolved, device.type)
    return resolved


def _rule(requested: str, device_type: str) -> str:
    if requested != "auto":
        return requested
    return "triton" if device_type in TRITON_DEVICE_TYPES and triton_available() else "torch"


@torch.compiler.assume_constant_result
def _resolved_while_compiling(requested: str, device_type: str, index, dtype) -> str:
    """Evaluated once, eagerly, when Dynamo traces the layer, and baked into the graph: the rule
    and the verdict of the check run before tracing (``auto`` with none yet takes torch)."""
    resolved = _rule(requested, device_type)
    if resolved != "triton" or device_type not in TRITON_DEVICE_TYPES or requested == "triton":
        return resolved
    check = _VERDICTS.get(_key(torch.device(device_type, index), dtype))
    return "triton" if check is not None and check.passed else "torch"


@functools.cache
def _announce(requested: str, resolved: str, device: str) -> None:
    log.info(
        "MoE backend: %s on %s tensors (train.runtime.backend %r): router, dispatch, experts "
        "and combine",
        resolved,
        device,
        requested,
    )


# --------------------------------------------------------------------------- self-check
@dataclass(frozen=True)
class CheckShape:
    """The self-check's problem. On a GPU (tiles of 128 rows, 64 or 128 columns, 64 inner) every
    dimension spans several tiles and ends in a partial one: ~170 rows per expert, D = 136,
    2F = 144, so the masks and the pipelined loops run as they do in training."""

    tokens: int = 512
    experts: int = 6
    top_k: int = 2
    d_model: int = 136
    hidden: int = 72
    # Expert ids are compared exactly: with this seed the smallest top-k selection gap is 4e-4
    # for both routers and dtypes (tests/model/test_backend_check.py), hundreds of times the
    # rounding of fp32 logits, so a correct kernel cannot flip a choice.
    seed: int = 4

    def __str__(self) -> str:
        return f"T={self.tokens} E={self.experts} K={self.top_k} D={self.d_model} F={self.hidden}"


CHECK_SHAPE = CheckShape()
ROUTERS = ("softmax_topk", "sigmoid_bias")  # both kinds the fused router computes


@dataclass(frozen=True)
class BackendCheck:
    """One self-check's outcome. ``worst``: the output or gradient furthest from the torch path,
    relative to its tolerance (``ratio`` <= 1 passes); ``error``: the exception the triton path
    raised, if it did."""

    device: str
    dtype: torch.dtype
    kernels: str
    shape: str
    worst: str
    ratio: float
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.ratio <= 1.0

    def summary(self) -> str:
        """One line for logs, the MLflow tag ``moe.backend_check`` and the model card."""
        where = f"{self.device}, {str(self.dtype).removeprefix('torch.')}, kernels {self.kernels}"
        if self.error is not None:
            return f"failed: triton raised {self.error} ({where}; problem {self.shape})"
        verdict = "passed" if self.passed else "failed"
        return (
            f"{verdict}: triton vs torch, largest error {self.worst} = {self.ratio:.2g} of the "
            f"tolerance ({where}; problem {self.shape}, forward and every gradient)"
        )


_VERDICTS: dict[tuple, BackendCheck] = {}


def self_check(device: torch.device, dtype: torch.dtype) -> BackendCheck:
    """The cached self-check of ``device`` and ``dtype`` (run on first use; see the module
    docstring), logged when it runs. An explicit ``triton`` request that fails raises."""
    key = _key(device, dtype)
    check = _VERDICTS.get(key)
    if check is None:
        check = _VERDICTS[key] = run_self_check(device, dtype, CHECK_SHAPE)
        if check.passed:
            log.info("MoE triton self-check %s", check.summary())
        else:
            log.warning(
                "MoE triton self-check %s; backend auto takes the torch path here, an explicit "
                "triton stops",
                check.summary(),
            )
    return check


def recorded_check(device: torch.device, dtype: torch.dtype) -> BackendCheck | None:
    """The verdict this process holds for ``device`` and ``dtype``, if the check ran."""
    return _VERDICTS.get(_key(device, dtype))


def _key(device: torch.device, dtype: torch.dtype) -> tuple:
    index = device.index
    if device.type == "cuda" and index is None:
        index = torch.cuda.current_device()
    return device.type, index, dtype, kernel_version()


@functools.cache
def kernel_version() -> str:
    """Triton's version and a digest of the kernel and op sources: a verdict holds for exactly
    the code that was checked."""
    root = Path(__file__).resolve().parents[1]
    sources = sorted([*root.glob("kernels/*.py"), *root.glob("ops/triton_*.py")])
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sources)).hexdigest()[:12]
    version = importlib.metadata.version("triton") if triton_available() else "none"
    return f"triton {version}/{digest}"


def run_self_check(device: torch.device, dtype: torch.dtype, shape: CheckShape) -> BackendCheck:
    """The triton path against the torch path on ``shape`` (uncached; :func:`self_check` caches).
    Runs outside any autocast, no-grad or inference region the caller may be in."""
    where = _describe(device)
    worst, ratio = "none", 0.0
    with _checking(device):
        for router in ROUTERS:
            problem = _problem(shape, router, device, dtype)
            want = _path("torch", problem)
            try:
                got = _path("triton", problem)
            except Exception as exc:  # any failure of the kernels is the verdict, not a crash
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                return BackendCheck(where, dtype, kernel_version(), f"{shape}, {router}",
                                    "none", math.nan, error=message[:300])  # fmt: skip
            for name in want:
                r, described = _discrepancy(name, got[name], want[name], dtype)
                if r > ratio or worst == "none":
                    worst, ratio = f"{name} ({router}): {described}", r
    return BackendCheck(where, dtype, kernel_version(), f"{shape}, routers {' + '.join(ROUTERS)}",
                        worst, ratio)  # fmt: skip


@contextlib.contextmanager
def _checking(device: torch.device):
    """Gradients on, autocast off, and exact fp32 matmuls on the torch path (TF32 would be
    compared with the kernels' IEEE fp32), whatever the caller had set."""
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with (
            torch.inference_mode(False),
            torch.enable_grad(),
            torch.autocast(device.type, enabled=False),
        ):
            yield
    finally:
        torch.set_float32_matmul_precision(precision)


def _describe(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return str(device)


@dataclass
class _Problem:
    router: torch.nn.Module
    x_TD: torch.Tensor
    w13_E2FD: torch.Tensor
    w2_EDF: torch.Tensor
    cotangents: dict[str, torch.Tensor]
    num_experts: int
    dtype: torch.dtype


def _problem(shape: CheckShape, router: str, device: torch.device, dtype: torch.dtype) -> _Problem:
    """Unit-scale activations, 1/sqrt(fan-in) weights (O(1) outputs), a random bias for the
    sigmoid router, and a random cotangent for every float output, scaled by 1/sqrt(T) so that
    the gradients (sums over the T tokens) stay O(1), the scale the tests' absolute tolerance
    is meant for. From a private generator: the caller's random stream is untouched."""
    g = torch.Generator().manual_seed(shape.seed)
    t, e, d, f = shape.tokens, shape.experts, shape.d_model, shape.hidden

    def draw(*size, scale=1.0, dt=torch.float32):
        return (scale * torch.randn(size, generator=g)).to(device, dt)

    cfg = MoEConfig(num_experts=e, top_k=shape.top_k, router=router)
    module = build_router(d, cfg).to(device).eval()  # eval: the sigmoid router keeps no loads
    with torch.no_grad():
        module.weight.copy_(draw(e, d, scale=d**-0.5))
        if router == "sigmoid_bias":
            module.expert_bias.copy_(draw(e, scale=0.1))
    return _Problem(
        router=module,
        x_TD=draw(t, d, dt=dtype).requires_grad_(),
        w13_E2FD=draw(e, 2 * f, d, scale=d**-0.5).requires_grad_(),
        w2_EDF=draw(e, d, f, scale=f**-0.5).requires_grad_(),
        cotangents={
            "y": draw(t, d, scale=t**-0.5),
            "probs": draw(t, e, scale=t**-0.5),
            "prob_sum": draw(e, scale=t**-0.5),
            "z_sum": draw(scale=t**-0.5),
        },
        num_experts=e,
        dtype=dtype,
    )


def _path(backend: str, p: _Problem) -> dict[str, torch.Tensor]:
    """The layer's routed part on ``backend``: routing outputs, output, and the gradients of a
    loss that reaches every float output (so every backward formula is exercised)."""
    from pipeline.model.moe import routed_experts  # the layer's module imports this one

    routing = p.router(p.x_TD, fused=backend == "triton")
    y_TD = routed_experts(
        LocalDispatcher(p.num_experts), p.x_TD, routing.weights_TK, routing.expert_ids_TK,
        p.w13_E2FD, p.w2_EDF, backend,
    ).to(p.dtype)  # fmt: skip
    c = p.cotangents
    loss = (
        (y_TD.float() * c["y"]).sum()
        + (routing.probs_TE * c["probs"]).sum()
        + (routing.prob_sum_E * c["prob_sum"]).sum()
        + routing.z_sum * c["z_sum"]
    )
    leaves = [p.x_TD, p.router.weight, p.w13_E2FD, p.w2_EDF]
    dx, drouter, dw13, dw2 = torch.autograd.grad(loss, leaves)
    return {
        "expert_ids": routing.expert_ids_TK,
        "counts": routing.counts_E,
        "weights": routing.weights_TK.detach(),
        "probs": routing.probs_TE.detach(),
        "prob_sum": routing.prob_sum_E.detach(),
        "z_sum": routing.z_sum.detach(),
        "y": y_TD.detach(),
        "dx": dx,
        "drouter": drouter,
        "dw13": dw13,
        "dw2": dw2,
    }


# The router computes in fp32 whatever the run's dtype (pipeline.model.router).
_FP32_OUTPUTS = ("weights", "probs", "prob_sum", "z_sum")


def _discrepancy(
    name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype
) -> tuple[float, str]:
    """``(error / tolerance, description)`` of one output: 0 or less is exact, above 1 fails."""
    if got.shape != want.shape:
        return math.inf, f"shape {tuple(got.shape)} instead of {tuple(want.shape)}"
    if name in ("expert_ids", "counts"):  # decisions: exact (the problem has no near-ties)
        wrong = int((got != want).sum())
        return (math.inf if wrong else 0.0), f"{wrong} of {want.numel()} differ"
    diff = (got.double() - want.double()).abs().nan_to_num(nan=math.inf)  # NaN never passes
    if name in _FP32_OUTPUTS or dtype in (torch.float32, torch.float64):
        allowed = FP32_TOL["atol"] + FP32_TOL["rtol"] * want.double().abs()
        return float((diff / allowed).max()), (
            f"max |error| {float(diff.max()):.2e} (rtol {FP32_TOL['rtol']:g}, "
            f"atol {FP32_TOL['atol']:g})"
        )
    err = float(diff.norm() / want.double().norm().clamp(min=1e-12))
    return err / BF16_NORM_RTOL, f"norm-relative error {err:.2e} (limit {BF16_NORM_RTOL:g})"
