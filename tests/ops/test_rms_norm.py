"""RMSNorm's hand-written CPU backward against torch's ``F.rms_norm``: output and both gradients
on random inputs of the model's shapes, float64 gradcheck, and which path runs when."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.ops.rms_norm import rms_norm


def output_and_grads(fn, x, weight, dy):
    x, weight = x.clone().requires_grad_(), weight.clone().requires_grad_()
    y = fn(x, weight)
    y.backward(dy)
    return y.detach(), x.grad, weight.grad


@pytest.mark.parametrize("shape", [(3, 16, 32), (2, 8, 4, 16), (5, 7)])
def test_matches_torchs_rms_norm_forward_and_gradients(shape):
    g = torch.Generator().manual_seed(len(shape))
    x, dy = torch.randn(shape, generator=g) * 3, torch.randn(shape, generator=g)
    weight = torch.rand(shape[-1], generator=g) + 0.5
    got = output_and_grads(lambda a, w: rms_norm(a, w, 1e-5), x, weight, dy)
    want = output_and_grads(lambda a, w: F.rms_norm(a, w.shape, w, 1e-5), x, weight, dy)
    for name, a, b in zip(("output", "x grad", "weight grad"), got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")


def test_gradcheck_in_float64():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 8, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.rand(8, dtype=torch.float64, generator=g).add_(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, w: rms_norm(a, w, 1e-6), (x, weight))


def test_the_hand_written_backward_runs_only_where_autograd_records_on_a_cpu():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 8, generator=g, requires_grad=True)
    weight = (torch.rand(8, generator=g) + 0.5).requires_grad_()
    recorded = rms_norm(x, weight, 1e-5)
    assert type(recorded.grad_fn).__name__ == "_RMSNormBackward"
    with torch.no_grad():  # F.rms_norm's path: the same values, nothing recorded
        plain = rms_norm(x, weight, 1e-5)
    assert plain.grad_fn is None
    torch.testing.assert_close(plain, recorded.detach())
    # A frozen input: the weight alone records through the hand-written backward and gets the
    # gradient F.rms_norm gives.
    frozen = x.detach()
    y = rms_norm(frozen, weight, 1e-5)
    assert type(y.grad_fn).__name__ == "_RMSNormBackward"
    y.sum().backward()
    want = output_and_grads(
        lambda a, w: F.rms_norm(a, w.shape, w, 1e-5), frozen, weight.detach(), torch.ones(4, 8)
    )[2]
    torch.testing.assert_close(weight.grad, want)
