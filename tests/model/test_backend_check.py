"""The triton self-check (:mod:`pipeline.model.backends`): it passes on correct kernels, fails on a
wrong forward, a wrong gradient or a raising kernel, and the ``auto`` rule acts on its verdict
(triton when it passes, torch with a warning when it fails, an error for an explicit ``triton``),
once per (device, dtype, kernel version), never inside a compiled graph.

On a CPU the kernels run under Triton's interpreter: the tests call the check with
``device=cpu`` directly, or make ``auto`` treat the CPU as a Triton device
(``TRITON_DEVICE_TYPES``), which on a GPU machine is what CUDA always is.
"""

from __future__ import annotations

import logging

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from pipeline.config import MoEConfig
from pipeline.model import MoELayer, backends
from pipeline.ops import triton_dispatch, triton_experts

pytestmark = pytest.mark.skipif(
    not backends.triton_available(), reason="the self-check compares the triton path"
)
CPU = torch.device("cpu")
SMALL = backends.CheckShape(tokens=40, experts=3, top_k=2, d_model=24, hidden=20)


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch, triton_device):
    """No verdict leaks between tests; the CPU counts as a Triton device for ``auto``; the
    problem is small (the default one is checked in its own tests). CPU only: on a GPU the
    kernels cannot take CPU tensors."""
    if triton_device.type != "cpu":
        pytest.skip("exercises the check on the CPU, under the interpreter")
    monkeypatch.setattr(backends, "_VERDICTS", {})
    monkeypatch.setattr(backends, "TRITON_DEVICE_TYPES", ("cuda", "cpu"))
    monkeypatch.setattr(backends, "CHECK_SHAPE", SMALL)


def _perturb_forward(monkeypatch):
    """A wrong experts kernel: every output row 5% too large (beyond the bf16 tolerance of 2%
    norm-relative, far beyond fp32's)."""
    right = triton_experts.swiglu_experts
    monkeypatch.setattr(triton_experts, "swiglu_experts", lambda *a: right(*a) * 1.05)


def _perturb_weight_gradient(monkeypatch):
    """A correct forward whose backward returns a wrong ``dw13`` (one expert's block zeroed)."""
    right = triton_experts.grouped_swiglu_backward

    def wrong(*args):
        dx, dw13, dw2 = right(*args)
        return dx, torch.cat([dw13[:1] * 0, dw13[1:]]), dw2

    monkeypatch.setattr(triton_experts, "grouped_swiglu_backward", wrong)


def _raise(monkeypatch):
    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(triton_dispatch, "group_by_expert", broken)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_correct_kernels_pass_on_the_default_problem(dtype):
    check = backends.run_self_check(CPU, dtype, backends.CheckShape())
    assert check.passed, check.summary()
    assert 0 < check.ratio <= 1 and check.error is None
    summary = check.summary()
    assert summary.startswith("passed: triton vs torch, largest error ")
    assert "T=512 E=6 K=2 D=136 F=72" in summary and str(dtype).removeprefix("torch.") in summary


def test_the_default_problem_has_no_near_ties():
    """Expert ids are compared exactly; a selection gap above rounding (~1e-6 for fp32 logits on
    any device) keeps a correct kernel from flipping one."""
    shape = backends.CheckShape()
    for router in backends.ROUTERS:
        for dtype in (torch.float32, torch.bfloat16):
            p = backends._problem(shape, router, CPU, dtype)
            with torch.no_grad():
                logits_TE = p.x_TD.float() @ p.router.weight.t()
                scores_TE = logits_TE  # softmax is monotonic: its ranking is the logits'
                if router == "sigmoid_bias":
                    scores_TE = logits_TE.sigmoid() + p.router.expert_bias
            top = scores_TE.topk(shape.top_k + 1, dim=-1).values
            gap = (top[:, shape.top_k - 1] - top[:, shape.top_k]).min()
            assert gap > 1e-4, f"{router} {dtype}: smallest selection gap {gap:.2e}"


@pytest.mark.parametrize(
    "inject,named",
    [(_perturb_forward, "y "), (_perturb_weight_gradient, "dw13 ")],
    ids=["wrong-forward", "wrong-dw13"],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_a_wrong_kernel_fails_naming_the_output(monkeypatch, inject, named, dtype):
    inject(monkeypatch)
    check = backends.run_self_check(CPU, dtype, SMALL)
    assert not check.passed and check.ratio > 1 and check.error is None
    if named == "dw13 ":  # the forward is right: only the gradient may be blamed
        assert check.worst.startswith(named), check.worst
    assert check.summary().startswith("failed: triton vs torch, largest error ")


def test_a_raising_kernel_fails_with_its_error(monkeypatch):
    _raise(monkeypatch)
    check = backends.run_self_check(CPU, torch.float32, SMALL)
    assert not check.passed
    assert check.error == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert check.summary().startswith("failed: triton raised RuntimeError: CUDA error")
    assert str(SMALL) in check.summary()


def test_auto_takes_triton_when_the_check_passes_and_checks_once(monkeypatch, caplog):
    runs = []
    real = backends.run_self_check
    monkeypatch.setattr(backends, "run_self_check", lambda *a: runs.append(a) or real(*a))
    with caplog.at_level(logging.INFO, logger="pipeline.model.backends"):
        assert backends.resolve_backend("auto", CPU, torch.float32) == "triton"
        assert backends.resolve_backend("auto", CPU, torch.float32) == "triton"
    assert len(runs) == 1  # cached per (device, dtype, kernel version)
    assert "MoE triton self-check passed: triton vs torch, largest error" in caplog.text
    assert backends.recorded_check(CPU, torch.float32).passed
    assert backends.recorded_check(CPU, torch.bfloat16) is None  # another dtype: not yet run


@pytest.mark.parametrize("inject", [_perturb_forward, _raise], ids=["wrong", "raising"])
def test_auto_falls_back_to_torch_with_a_warning(monkeypatch, caplog, inject):
    inject(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="pipeline.model.backends"):
        assert backends.resolve_backend("auto", CPU, torch.float32) == "torch"
    warning = caplog.records[-1]
    assert warning.levelno == logging.WARNING and "MoE triton self-check failed" in warning.message
    assert str(SMALL) in warning.message and "takes the torch path" in warning.message


def test_explicit_triton_stops_instead_of_falling_back(monkeypatch):
    _perturb_forward(monkeypatch)
    with pytest.raises(backends.BackendCheckError, match=r"backend = 'triton': the self-check fa"):
        backends.resolve_backend("triton", CPU, torch.float32)


def test_a_failed_check_sends_the_layer_through_torch(monkeypatch):
    """The layer follows the verdict end to end: no Triton op runs after a failed check."""
    _perturb_forward(monkeypatch)
    assert backends.resolve_backend("auto", CPU, torch.float32) == "torch"  # the check fails
    ran = []
    monkeypatch.setattr(triton_dispatch, "combine", lambda *a: ran.append(1))
    layer = MoELayer(16, MoEConfig(num_experts=4, top_k=2, expert_hidden=8), backend="auto")
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    y, _, _ = layer(torch.randn(2, 5, 16))
    assert y.shape == (2, 5, 16) and not ran


def test_the_check_leaves_the_callers_state_alone():
    """Random stream, grad mode, autocast and matmul precision: as the caller had them."""
    torch.manual_seed(3)
    before = torch.get_rng_state()
    torch.set_float32_matmul_precision("high")
    try:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            check = backends.run_self_check(CPU, torch.float32, SMALL)
            assert not torch.is_grad_enabled() and torch.is_autocast_enabled("cpu")
        assert check.passed, check.summary()  # gradients were computed inside no_grad
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision("highest")
    assert torch.equal(torch.get_rng_state(), before)


def _compiled_layer_ops(backend: str) -> tuple[set[str], torch.Tensor]:
    layer = MoELayer(16, MoEConfig(num_experts=4, top_k=2, expert_hidden=8), backend=backend)
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=g)
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")
    y, aux, _ = torch.compile(layer, backend=counter, fullgraph=True)(torch.randn(2, 7, 16))
    (y.sum() + aux).backward()
    ops = {
        str(node.target)
        for gm in counter.graphs
        for node in gm.graph.nodes
        if node.op == "call_function" and "moe_triton" in str(node.target)
    }
    assert counter.frame_count == 1
    return ops, y


def test_compiled_layer_uses_the_verdict_checked_before_tracing(monkeypatch):
    """What the trainer does: resolve eagerly first (the check runs there), then compile; the
    traced graph reads the cached verdict and holds the Triton ops (``fullgraph``: no break)."""
    runs = []
    real = backends.run_self_check
    monkeypatch.setattr(backends, "run_self_check", lambda *a: runs.append(a) or real(*a))
    assert backends.resolve_backend("auto", CPU, torch.float32) == "triton"
    ops, _ = _compiled_layer_ops("auto")
    assert "moe_triton.grouped_swiglu.default" in ops
    assert len(runs) == 1


def test_no_check_runs_while_compiling(monkeypatch):
    """An explicit triton compiled before any eager forward: nothing runs inside the trace."""
    monkeypatch.setattr(backends, "run_self_check", lambda *a: pytest.fail("ran while tracing"))
    ops, _ = _compiled_layer_ops("triton")
    assert "moe_triton.grouped_swiglu.default" in ops
    assert backends.recorded_check(CPU, torch.float32) is None
