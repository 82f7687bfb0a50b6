"""The torch backend's grouped GEMM: ``torch._grouped_mm`` where it applies, a loop otherwise,
and the dtype the expert GEMMs run in."""

from __future__ import annotations

import pytest
import torch

from pipeline.ops.torch_gemm import _loop_mm, _native_unsupported_reason, gemm_dtype


@pytest.mark.parametrize("shape", [(13, 8, 12), (13, 8, 6)])  # aligned, and N*4 bytes unaligned
def test_loop_fallback_matches_grouped_mm_contract(shape):
    s, z, n = shape
    a, b = torch.randn(s, z), torch.randn(3, z, n)
    offs = torch.tensor([4, 4, s], dtype=torch.int32)  # middle group empty
    expected = torch.cat([a[:4] @ b[0], a[4:] @ b[2]])
    torch.testing.assert_close(_loop_mm(a, b, offs), expected)
    g = torch.randn(s, n)
    w = _loop_mm(a.t(), g, offs)
    assert torch.equal(w[1], torch.zeros(z, n)), "an empty group's weight gradient must be zero"
    torch.testing.assert_close(w[2], a[4:].t() @ g[4:])
    if (n * 4) % 16 == 0:
        torch.testing.assert_close(torch._grouped_mm(a, b, offs=offs), expected)


def test_grouped_mm_support_check():
    ok = torch.randn(8, 16)
    assert _native_unsupported_reason(ok, torch.randn(2, 16, 8)) is None
    assert "16 bytes" in _native_unsupported_reason(torch.randn(8, 13), torch.randn(2, 13, 8))
    assert "16 bytes" in _native_unsupported_reason(ok, torch.randn(2, 16, 7))
    assert "float16" in _native_unsupported_reason(ok.half(), torch.randn(2, 16, 8).half())


def test_gemm_dtype_policy():
    cpu = torch.device("cpu")
    assert gemm_dtype(torch.float32, cpu) == torch.float32
    assert gemm_dtype(torch.float16, cpu) == torch.float32  # no CPU multiplies fp16 fast
    assert gemm_dtype(torch.bfloat16, torch.device("cuda")) == torch.bfloat16
