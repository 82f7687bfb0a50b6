"""Every backend's dispatch → experts → combine against the reference: forward and ALL gradients.

:func:`pipeline.model.moe.routed_experts` on a :class:`LocalDispatcher`, with the ``torch``
backend (both of its paths: grouped GEMMs, and expert by expert) and the ``triton`` backend
(under the interpreter on CPU, compiled on a GPU), against ``reference`` (per-expert loops).
Gradients compared: the input x, the router weight (through the routing weights), w13, w2.
Shapes include the awkward cases: an expert with no token, k=3, k=E, E=1, T=1, sizes that are
not multiples of 16 (some defeat torch._grouped_mm's 16-byte rule, so its loop fallback runs),
more than one 64-row/column/inner tile of the interpreter's kernels, capacity drops under both
policies, and every slot empty. A few shapes are drawn fresh on every run; the seed is in the
test id and the failure message (set MOE_TEST_SEED to replay).
"""

from __future__ import annotations

import importlib
import os
import random

import pytest
import torch

# The tolerances (and why they are what they are) are shared with the GPU self-check.
from pipeline.model.backends import BF16_NORM_RTOL, FP32_TOL, check_backend, resolve_backend
from pipeline.model.capacity import capacity_keep_mask, expert_capacity
from pipeline.model.dispatch import LocalDispatcher
from pipeline.model.moe import routed_experts

SEED = int(os.environ["MOE_TEST_SEED"])  # tests/conftest.py: one per session


def _case(t, k, e, d, f, *, empty_expert=None, capacity=None, policy="probability"):
    return {"T": t, "K": k, "E": e, "D": d, "F": f, "empty": empty_expert, "cap": capacity,
            "policy": policy}  # fmt: skip


def _random_cases(n: int) -> list[dict]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(n):
        e = rng.randint(1, 9)
        cases.append(
            _case(rng.randint(1, 40), rng.randint(1, e), e, rng.randint(3, 70), rng.randint(2, 70))
        )
    return cases


CASES = [
    _case(17, 2, 6, 20, 12, empty_expert=3),  # an expert receives no token
    _case(23, 3, 5, 24, 12),  # k=3
    _case(11, 4, 4, 16, 8),  # k=E
    _case(9, 1, 1, 12, 20),  # one expert
    _case(1, 2, 4, 8, 4),  # one token
    _case(19, 2, 5, 13, 7),  # D, F break the 16-byte rule: torch's loop fallback
    _case(45, 2, 3, 72, 66),  # > 64 in every dim: several kernel tiles
    _case(30, 2, 4, 20, 12, capacity=0.5, policy="probability"),  # drops, probability policy
    _case(30, 2, 4, 20, 12, capacity=0.5, policy="position"),  # drops, position policy
    _case(6, 1, 3, 8, 4, capacity=1e-9),  # one slot per expert: most tokens dropped
    *_random_cases(2),
]
BF16_CASES = [CASES[1], CASES[5], CASES[7]]


def _ids(case):
    return (f"T{case['T']}-K{case['K']}-E{case['E']}-D{case['D']}-F{case['F']}"
            f"-empty{case['empty']}-cap{case['cap']}-{case['policy']}-seed{SEED}")  # fmt: skip


def _make_inputs(case, dtype, seed, device="cpu"):
    """Unit-scale activations and 1/sqrt(fan_in) weights, so outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    t, e, d, f = case["T"], case["E"], case["D"], case["F"]

    def leaf(*shape, fan_in=1):
        return (torch.randn(*shape, generator=g) / fan_in**0.5).to(device, dtype).requires_grad_()

    offset_E = torch.zeros(e)
    if case["empty"] is not None:
        offset_E[case["empty"]] = -100.0  # the router never picks this expert
    return {
        "x": leaf(t, d),
        "router": leaf(e, d, fan_in=d),
        "w13": leaf(e, 2 * f, d, fan_in=d),
        "w2": leaf(e, d, f, fan_in=f),
        "offset": offset_E.to(device),
    }


def _route(case, p):
    """Softmax top-k routing (renormalised), then capacity drops if the case asks for them."""
    logits_TE = p["x"].float() @ p["router"].float().t() + p["offset"]
    weights_TK, ids_TK = logits_TE.softmax(-1).topk(case["K"], dim=-1)
    weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True)
    if case["cap"] is not None:
        cap = expert_capacity(case["T"], case["K"], case["E"], case["cap"])
        counts_E = torch.bincount(ids_TK.flatten(), minlength=case["E"])
        keep = capacity_keep_mask(weights_TK, ids_TK, counts_E, cap, case["policy"])
        weights_TK, ids_TK = torch.where(keep, weights_TK, 0.0), torch.where(keep, ids_TK, -1)
    return weights_TK, ids_TK


def _moe(backend, case, p, weights_TK, ids_TK):
    dispatcher = LocalDispatcher(case["E"])
    return routed_experts(dispatcher, p["x"], weights_TK, ids_TK, p["w13"], p["w2"], backend)


def _run(backend, case, p, grad_out):
    weights_TK, ids_TK = _route(case, p)
    y = _moe(backend, case, p, weights_TK, ids_TK).to(p["x"].dtype)
    leaves = [p[name] for name in ("x", "router", "w13", "w2")]
    grads = torch.autograd.grad(y, leaves, grad_out, allow_unused=True)
    return (
        y,
        [torch.zeros_like(v) if gr is None else gr for v, gr in zip(leaves, grads, strict=True)],
        ids_TK,
    )


def _compare(backend, case, dtype, device="cpu"):
    p = _make_inputs(case, dtype, SEED, device)
    grad_out = torch.randn(case["T"], case["D"], generator=torch.Generator().manual_seed(SEED + 1))
    grad_out = grad_out.to(device, dtype)
    y_ref, g_ref, ids = _run("reference", case, p, grad_out)
    y_new, g_new, _ = _run(backend, case, p, grad_out)
    msg = f"{backend} case {_ids(case)} dtype {dtype}"
    names = ("output", "dx", "drouter", "dw13", "dw2")
    for name, a, b in zip(names, [y_new, *g_new], [y_ref, *g_ref], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape, f"{msg}: {name}"
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, **FP32_TOL, msg=lambda m, n=name: f"{msg}: {n}\n{m}")
        else:
            err = (a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)
            assert err < BF16_NORM_RTOL, f"{msg}: {name} norm-relative error {err:.3g}"
    if case["empty"] is not None:
        assert not (ids == case["empty"]).any(), "the test meant to leave an expert empty"
    if case["cap"] is not None:
        assert (ids == -1).any(), "the capacity case should drop something"


@pytest.fixture(params=["grouped", "per-group"])
def torch_path(request, monkeypatch):
    """Both ways the ``torch`` backend can run: grouped GEMMs over all experts, or expert by
    expert (what large CPU groups use; forced here for every size)."""
    if request.param == "per-group":
        module = importlib.import_module("pipeline.ops.torch_experts")  # not the function
        monkeypatch.setattr(module, "CPU_PER_GROUP_MIN_ROWS", 0)
        monkeypatch.setattr(module, "CPU_PER_GROUP_MIN_BYTES", 0)
    return request.param


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_torch_backend_matches_reference_fp32(case, torch_path):
    _compare("torch", case, torch.float32)


@pytest.mark.parametrize("case", BF16_CASES, ids=_ids)
def test_torch_backend_matches_reference_bf16(case, torch_path):
    _compare("torch", case, torch.bfloat16)


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_triton_backend_matches_reference_fp32(triton_device, case):
    _compare("triton", case, torch.float32, triton_device)


@pytest.mark.gpu
@pytest.mark.parametrize("case", BF16_CASES, ids=_ids)
def test_triton_backend_matches_reference_bf16_cuda(case):
    _compare("triton", case, torch.bfloat16, torch.device("cuda"))


@pytest.mark.gpu
def test_triton_backend_large_shape_bf16_cuda():
    """A shape with many tiles per expert and per weight matrix, as the GPU runs it."""
    _compare("triton", _case(2048, 4, 16, 512, 384), torch.bfloat16, torch.device("cuda"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter only")
def test_interpreter_bf16_is_computed_exactly_through_fp32():
    """The interpreter's bf16 ``tl.dot`` is wrong; the kernels upcast there. Compared with the
    reference run in fp32 on the same bf16-rounded inputs."""
    case = _case(13, 2, 3, 16, 16)
    p = _make_inputs(case, torch.bfloat16, 0)
    weights_TK, ids_TK = _route(case, p)
    y = _moe("triton", case, p, weights_TK, ids_TK)
    p32 = {n: v.detach().float() for n, v in p.items()}
    ref = _moe("reference", case, p32, weights_TK.detach().float(), ids_TK)
    err = (y.float() - ref).norm() / ref.norm()
    assert err < 1e-2, f"norm-relative error {err:.3g} (bf16 output rounding is ~4e-3)"


def _all_empty(backend, device):
    case = _case(5, 2, 3, 8, 4)
    p = _make_inputs(case, torch.float32, 0, device)
    ids = torch.full((5, 2), -1, device=device)
    weights = torch.rand(5, 2, device=device, requires_grad=True)
    y = _moe(backend, case, p, weights, ids)
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    for t in (p["x"], weights, p["w13"], p["w2"]):
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_all_slots_empty_gives_zero_output_and_zero_grads_torch(torch_path):
    _all_empty("torch", "cpu")


def test_all_slots_empty_gives_zero_output_and_zero_grads_triton(triton_device):
    _all_empty("triton", triton_device)


def test_stride0_incoming_gradient_is_accepted():
    """``y.sum().backward()`` sends a broadcast (stride-0) gradient; grouped_mm rejects those."""
    case = _case(8, 2, 4, 16, 8)
    p = _make_inputs(case, torch.float32, 3)
    weights, ids = _route(case, p)
    _moe("torch", case, p, weights, ids).sum().backward()
    assert p["w13"].grad.abs().sum() > 0


def test_auto_is_decided_by_the_device_and_names_are_checked():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("reference", torch.device("cpu")) == "reference"
    assert check_backend("auto") == "auto"
    with pytest.raises(ValueError, match="unknown MoE backend"):
        check_backend("cuda_magic")
