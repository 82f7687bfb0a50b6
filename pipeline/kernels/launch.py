"""What every launcher shares: input checks with clear errors, and fixed launch configs.

There is no autotuning: ``triton.autotune`` cannot run under the interpreter, and a fixed config
per kernel keeps GPU and CPU runs on the same code path. The GPU configs are sized for Hopper-class
GPUs with bf16 operands; under the interpreter every program instance costs ~5 ms whatever its
size, so the blocks there are as large as the tests' shapes need, to keep grids small.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pipeline.errors import PipelineError


class KernelInputError(PipelineError, ValueError):
    """A tensor handed to a Triton launcher has the wrong shape, dtype or device."""


FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
INDEX_DTYPES = (torch.int32, torch.int64)


def interpreting(kernel: object) -> bool:
    """Whether ``kernel`` was defined under ``TRITON_INTERPRET=1`` (runs on CPU tensors)."""
    return type(kernel).__name__ == "InterpretedFunction"


def check_device(kernel: object, *tensors: torch.Tensor) -> None:
    """All tensors on one device, and one the kernel can run on."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise KernelInputError(
            f"Triton kernel inputs are on several devices: {sorted(map(str, devices))}"
        )
    device = devices.pop()
    if device.type == "cpu" and not interpreting(kernel):
        raise KernelInputError(
            "Triton kernels got CPU tensors but were compiled for a GPU: set TRITON_INTERPRET=1 "
            "before pipeline.kernels.* is first imported to run them on CPU (slowly)"
        )


def check(
    name: str,
    t: torch.Tensor,
    *,
    shape: Iterable[int | None],
    dtypes: tuple[torch.dtype, ...],
    unit_stride: bool = True,
) -> None:
    """``t`` has ``shape`` (None = any size) and one of ``dtypes`` (and, with ``unit_stride``, a
    contiguous last dimension: kernels that take no stride for it assume one)."""
    shape = tuple(shape)
    if t.dim() != len(shape) or any(
        s is not None and s != n for s, n in zip(shape, t.shape, strict=True)
    ):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise KernelInputError(f"{name}: expected shape {want}, got {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise KernelInputError(f"{name}: expected dtype in {dtypes}, got {t.dtype}")
    if unit_stride and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise KernelInputError(
            f"{name}: the last dimension must be contiguous, got strides {t.stride()}"
        )


def check_same_dtype(**tensors: torch.Tensor) -> None:
    dtypes = {name: t.dtype for name, t in tensors.items()}
    if len(set(dtypes.values())) != 1:
        raise KernelInputError(f"these Triton kernel inputs must share one dtype: {dtypes}")


def acc_dtype(dtype: torch.dtype) -> tl.dtype:
    """Accumulate in fp64 for fp64 inputs (gradcheck), else in fp32."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def pow2(n: int, floor: int = 1) -> int:
    return max(triton.next_power_of_2(max(n, 1)), floor)


@dataclass(frozen=True)
class MatmulConfig:
    """One GEMM tile: ``block_rows × block_cols`` outputs, ``block_inner`` along the contracted
    dimension per step."""

    block_rows: int
    block_cols: int
    block_inner: int
    num_warps: int
    num_stages: int


# GPU: 128-row tiles, 64-wide steps along the contracted dim, bf16 operands (a SwiGLU forward tile holds two
# accumulators, hence its narrower N). Interpreter: one 64-cube tile covers the test shapes.
GPU_MM = {
    "rows": MatmulConfig(128, 128, 64, num_warps=8, num_stages=3),
    "swiglu": MatmulConfig(128, 64, 64, num_warps=8, num_stages=3),
    "wgrad": MatmulConfig(128, 128, 64, num_warps=8, num_stages=3),
}
INTERPRET_MM = MatmulConfig(64, 64, 64, num_warps=1, num_stages=1)


def matmul_config(kernel: object, kind: str) -> MatmulConfig:
    return INTERPRET_MM if interpreting(kernel) else GPU_MM[kind]
