"""Every expert backend against the reference loop: forward and ALL gradients.

Gradients compared: input x, w1, w2, w3 and the router weight (through the routing weights).
Shapes include the awkward cases: an expert with no token, k=3, k=E, E=1, T=1, sizes that are
not multiples of 16 (and some that defeat torch._grouped_mm's 16-byte rule, so the loop fallback
runs), capacity drops under both policies, and every slot empty. A few shapes are drawn fresh on
every run; the seed is in the test id and the failure message (set MOE_TEST_SEED to replay).
"""

from __future__ import annotations

import importlib
import os
import random

import pytest
import torch

from pipeline.model.losses import capacity_keep_mask
from pipeline.model.router import expert_capacity
from pipeline.ops import available_backends, get_backend
from pipeline.ops.grouped_gemm import _loop_mm, _native_unsupported_reason, gemm_dtype
from pipeline.ops.sorted_experts import _sort_assignments

# fp32: both backends do the same arithmetic in another order (grouped vs per-expert GEMMs,
# routing weight applied to the hidden rows vs the outputs, index_add order), so they differ by
# accumulated rounding, ~1e-6 relative for these sizes. A wrong row, weight or permutation gives
# O(1) errors, so 1e-4 relative / 1e-5 absolute catches every real bug with a wide margin.
FP32_TOL = {"rtol": 1e-4, "atol": 1e-5}
# bf16: the reference multiplies in bf16 (8-bit mantissa, eps 2^-8 ≈ 4e-3) while the torch
# backend may accumulate in fp32 (see gemm_dtype). Elementwise checks are meaningless for sums
# with cancellation (a router-gradient entry near 0 can differ by 50% relative), so bf16 is held
# to a norm-relative error: ||a - b|| / ||b|| below 2e-2, a few bf16 epsilons accumulated, while
# a wrong row or weight gives an error of order 1.
BF16_NORM_RTOL = 2e-2

SEED = int(os.environ.get("MOE_TEST_SEED", random.randrange(2**31)))


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny shapes gain nothing from threads, and on a shared 2-core machine an OpenMP barrier
    waiting for a descheduled thread stalls each op by ~100 ms; restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _case(t, k, e, d, f, *, empty_expert=None, capacity=None, policy="probability"):
    return {"T": t, "K": k, "E": e, "D": d, "F": f, "empty": empty_expert, "cap": capacity,
            "policy": policy}  # fmt: skip


def _random_cases(n: int) -> list[dict]:
    rng = random.Random(SEED)
    cases = []
    for _ in range(n):
        e = rng.randint(1, 9)
        cases.append(
            _case(rng.randint(1, 40), rng.randint(1, e), e, rng.randint(3, 40), rng.randint(2, 40))
        )
    return cases


CASES = [
    _case(17, 2, 6, 20, 12, empty_expert=3),  # an expert receives no token
    _case(23, 3, 5, 24, 12),  # k=3
    _case(11, 4, 4, 16, 8),  # k=E
    _case(9, 1, 1, 12, 20),  # one expert
    _case(1, 2, 4, 8, 4),  # one token
    _case(19, 2, 5, 13, 7),  # D, F break the 16-byte rule: loop fallback
    _case(30, 2, 4, 20, 12, capacity=0.5, policy="probability"),  # drops, probability policy
    _case(30, 2, 4, 20, 12, capacity=0.5, policy="position"),  # drops, position policy
    _case(6, 1, 3, 8, 4, capacity=1e-9),  # one slot per expert: most tokens dropped
    *_random_cases(3),
]


def _ids(case):
    return (f"T{case['T']}-K{case['K']}-E{case['E']}-D{case['D']}-F{case['F']}"
            f"-empty{case['empty']}-cap{case['cap']}-{case['policy']}-seed{SEED}")  # fmt: skip


def _make_inputs(case, dtype, seed):
    """Unit-scale activations and 1/sqrt(fan_in) weights, so outputs are O(1)."""
    g = torch.Generator().manual_seed(seed)
    t, e, d, f = case["T"], case["E"], case["D"], case["F"]

    def param(*shape, fan_in):
        return (torch.randn(*shape, generator=g) / fan_in**0.5).to(dtype).requires_grad_()

    offset_E = torch.zeros(e)
    if case["empty"] is not None:
        offset_E[case["empty"]] = -100.0  # the router never picks this expert
    return {
        "x": torch.randn(t, d, generator=g).to(dtype).requires_grad_(),
        "router": param(e, d, fan_in=d),
        "w1": param(e, f, d, fan_in=d),
        "w3": param(e, f, d, fan_in=d),
        "w2": param(e, d, f, fan_in=f),
        "offset": offset_E,
    }


def _route(case, p):
    """Softmax top-k routing (renormalised), then capacity drops if the case asks for them."""
    logits_TE = p["x"].float() @ p["router"].float().t() + p["offset"]
    weights_TK, ids_TK = logits_TE.softmax(-1).topk(case["K"], dim=-1)
    weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True)
    if case["cap"] is not None:
        cap = expert_capacity(case["T"], case["K"], case["E"], case["cap"])
        keep = capacity_keep_mask(weights_TK, ids_TK, cap, case["policy"])
        weights_TK, ids_TK = torch.where(keep, weights_TK, 0.0), torch.where(keep, ids_TK, -1)
    return weights_TK, ids_TK


def _run(backend_name, case, p, grad_out):
    weights_TK, ids_TK = _route(case, p)
    y = get_backend(backend_name)(p["x"], weights_TK, ids_TK, p["w1"], p["w3"], p["w2"])
    leaves = [p[name] for name in ("x", "router", "w1", "w3", "w2")]
    grads = torch.autograd.grad(y, leaves, grad_out, allow_unused=True)
    return (
        y,
        [torch.zeros_like(v) if gr is None else gr for v, gr in zip(leaves, grads, strict=True)],
        ids_TK,
    )


def _compare(case, dtype, seed):
    p = _make_inputs(case, dtype, seed)
    grad_out = torch.randn(case["T"], case["D"], generator=torch.Generator().manual_seed(seed + 1))
    grad_out = grad_out.to(dtype)
    y_ref, g_ref, ids = _run("reference", case, p, grad_out)
    y_new, g_new, _ = _run("torch", case, p, grad_out)
    msg = f"case {_ids(case)} dtype {dtype}"
    names = ("output", "dx", "drouter", "dw1", "dw3", "dw2")
    for name, a, b in zip(names, [y_new, *g_new], [y_ref, *g_ref], strict=True):
        assert a.dtype == b.dtype, f"{msg}: {name} dtype {a.dtype} != {b.dtype}"
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, **FP32_TOL, msg=lambda m, n=name: f"{msg}: {n}\n{m}")
        else:
            err = (a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)
            assert err < BF16_NORM_RTOL, f"{msg}: {name} norm-relative error {err:.3g}"
    return ids


@pytest.fixture(params=["grouped", "per-group"])
def torch_path(request, monkeypatch):
    """Both ways the ``torch`` backend can run: grouped GEMMs over all experts, or expert by
    expert (what large CPU groups use; forced here for every size)."""
    if request.param == "per-group":
        module = importlib.import_module("pipeline.ops.sorted_experts")  # not the function
        monkeypatch.setattr(module, "CPU_PER_GROUP_MIN_ROWS", 0)
        monkeypatch.setattr(module, "CPU_PER_GROUP_MIN_BYTES", 0)
    return request.param


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_torch_backend_matches_reference_fp32(case, torch_path):
    ids = _compare(case, torch.float32, SEED)
    if case["empty"] is not None:
        assert not (ids == case["empty"]).any(), "the test meant to leave an expert empty"
    if case["cap"] is not None:
        assert (ids == -1).any(), "the capacity case should drop something"


@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[6]], ids=_ids)
def test_torch_backend_matches_reference_bf16(case, torch_path):
    _compare(case, torch.bfloat16, SEED)


def test_all_slots_empty_gives_zero_output_and_zero_grads(torch_path):
    p = _make_inputs(_case(5, 2, 3, 8, 4), torch.float32, 0)
    ids = torch.full((5, 2), -1)
    weights = torch.rand(5, 2, requires_grad=True)
    y = get_backend("torch")(p["x"], weights, ids, p["w1"], p["w3"], p["w2"])
    assert torch.equal(y, torch.zeros_like(y))
    y.sum().backward()
    for t in (p["x"], weights, p["w1"], p["w3"], p["w2"]):
        assert torch.equal(t.grad, torch.zeros_like(t))


def test_stride0_incoming_gradient_is_accepted():
    """``y.sum().backward()`` sends a broadcast (stride-0) gradient; grouped_mm rejects those."""
    case = _case(8, 2, 4, 16, 8)
    p = _make_inputs(case, torch.float32, 3)
    weights, ids = _route(case, p)
    get_backend("torch")(p["x"], weights, ids, p["w1"], p["w3"], p["w2"]).sum().backward()
    assert p["w1"].grad.abs().sum() > 0


def test_sort_assignments_groups_by_expert_stably_and_skips_empty_slots():
    ids_TK = torch.tensor([[2, 0], [-1, 2], [0, -1], [2, 1]])
    order_S, offs_E = _sort_assignments(ids_TK, num_experts=4)
    flat = ids_TK.reshape(-1)
    assert order_S.tolist() == [1, 4, 7, 0, 3, 6]  # expert 0: slots 1, 4; 1: 7; 2: 0, 3, 6
    assert flat[order_S].tolist() == [0, 0, 1, 2, 2, 2]
    assert offs_E.tolist() == [2, 3, 6, 6]  # expert 3 is empty
    assert offs_E.dtype == torch.int32


@pytest.mark.parametrize("shape", [(13, 8, 12), (13, 8, 6)])  # aligned, and N*4 bytes unaligned
def test_loop_fallback_matches_grouped_mm_contract(shape):
    s, k, n = shape
    a, b = torch.randn(s, k), torch.randn(3, k, n)
    offs = torch.tensor([4, 4, s], dtype=torch.int32)  # middle group empty
    expected = torch.cat([a[:4] @ b[0], a[4:] @ b[2]])
    torch.testing.assert_close(_loop_mm(a, b, offs), expected)
    g = torch.randn(s, n)
    w = _loop_mm(a.t(), g, offs)
    assert torch.equal(w[1], torch.zeros(k, n)), "an empty group's weight gradient must be zero"
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


def test_backend_registry():
    assert get_backend("auto").name == "auto"  # resolved per call; triton: tests/kernels
    assert {"reference", "torch"} <= set(available_backends()) <= {"reference", "torch", "triton"}
    with pytest.raises(ValueError, match="unknown MoE backend"):
        get_backend("cuda_magic")
