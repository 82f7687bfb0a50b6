"""The ``triton`` backend against the reference loop: the output and every gradient.

Gradients: x, the routing weights, w1, w3, w2. Grid: an expert with no token, k=3, k=E, E=1 with
k=1, T=1, sizes that are not multiples of the 64 blocks (several row, column and K tiles),
capacity drops (ids -1 from the layer's capacity mask), every slot empty, and random shapes
drawn afresh each run (the seed is in the test id).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

from pipeline.model.losses import capacity_keep_mask
from pipeline.model.router import expert_capacity
from pipeline.ops import get_backend

# fp32: same arithmetic in another order (grouped tiles vs per-expert GEMMs, weight applied in the
# combine): ~1e-6 relative. A wrong row, weight or tile gives O(1) errors.
FP32_TOL = {"rtol": 1e-4, "atol": 1e-5}
# bf16 (GPU): the reference multiplies in bf16 and the kernels accumulate in fp32; norm-relative
# error below a few bf16 epsilons (2^-8 ≈ 4e-3) accumulated, while a bug gives order 1.
BF16_NORM_RTOL = 2e-2
SEED = random.randrange(2**31)


def _case(t, k, e, d, f, empty=None, capacity=None):
    return (t, k, e, d, f, empty, capacity)


def _random(n):
    rng = random.Random(SEED)
    out = []
    for _ in range(n):
        e = rng.randint(1, 8)
        out.append(
            _case(rng.randint(1, 40), rng.randint(1, e), e, rng.randint(8, 70), rng.randint(4, 70))
        )
    return out


CASES = [
    _case(17, 2, 6, 20, 12, empty=3),  # an expert receives no token
    _case(23, 3, 5, 24, 12),  # k=3
    _case(11, 4, 4, 16, 8),  # k=E
    _case(9, 1, 1, 12, 20),  # one expert, top-1
    _case(1, 2, 4, 8, 4),  # one token
    _case(45, 2, 3, 72, 66),  # > 64 in every dim: several row, column and K tiles
    _case(30, 2, 4, 20, 12, capacity=0.5),  # capacity drops
    _case(6, 1, 3, 8, 4, capacity=1e-9),  # one slot per expert
    *_random(2),
]


def _name(c):
    return "T{}-K{}-E{}-D{}-F{}-empty{}-cap{}".format(*c) + f"-seed{SEED}"


def _inputs(case, dtype, device, seed=0):
    t, k, e, d, f, empty, capacity = case
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, dtype).requires_grad_()

    logits = torch.randn(t, e, generator=g)
    if empty is not None:
        logits[:, empty] = -100.0
    probs = logits.softmax(-1)
    weights, ids = probs.topk(k, dim=-1)
    if capacity is not None:
        keep = capacity_keep_mask(weights, ids, expert_capacity(t, k, e, capacity), "position")
        ids = torch.where(keep, ids, -1)
        assert (ids == -1).any()
    return {
        "x": leaf(t, d),
        "weights": weights.to(device, dtype).requires_grad_(),
        "ids": ids.to(device),
        "w1": leaf(e, f, d, scale=d**-0.5),
        "w3": leaf(e, f, d, scale=d**-0.5),
        "w2": leaf(e, d, f, scale=f**-0.5),
    }


def _run(backend, p, grad_out):
    y = get_backend(backend)(p["x"], p["weights"], p["ids"], p["w1"], p["w3"], p["w2"])
    leaves = [p[n] for n in ("x", "weights", "w1", "w3", "w2")]
    grads = torch.autograd.grad(y, leaves, grad_out, allow_unused=True)
    return [
        y,
        *(torch.zeros_like(v) if gr is None else gr for v, gr in zip(leaves, grads, strict=True)),
    ]


def _compare(case, dtype, device):
    p = _inputs(case, dtype, device)
    grad_out = torch.randn(case[0], case[3], generator=torch.Generator().manual_seed(1))
    grad_out = grad_out.to(device, dtype)
    got, want = _run("triton", p, grad_out), _run("reference", p, grad_out)
    for name, a, b in zip(("y", "dx", "dweights", "dw1", "dw3", "dw2"), got, want, strict=True):
        msg = f"{_name(case)} {dtype}: {name}"
        assert a.dtype == b.dtype and a.shape == b.shape, msg
        if dtype == torch.float32:
            torch.testing.assert_close(a, b, **FP32_TOL, msg=lambda m, s=msg: f"{s}\n{m}")
        else:
            err = (a.float() - b.float()).norm() / b.float().norm().clamp(min=1e-12)
            assert err < BF16_NORM_RTOL, f"{msg}: norm-relative error {err:.3g}"


@pytest.mark.parametrize("case", CASES, ids=_name)
def test_triton_backend_matches_reference_fp32(device, case):
    _compare(case, torch.float32, device)


@pytest.mark.gpu
@pytest.mark.parametrize("case", [CASES[1], CASES[5], CASES[6]], ids=_name)
def test_triton_backend_matches_reference_bf16_cuda(case):
    _compare(case, torch.bfloat16, torch.device("cuda"))


@pytest.mark.gpu
def test_triton_backend_large_shape_bf16_cuda():
    """A shape with many tiles per expert and per weight matrix, as the GPU runs it."""
    _compare(_case(2048, 4, 16, 512, 384), torch.bfloat16, torch.device("cuda"))


def test_all_slots_empty_gives_zero_output_and_zero_grads(device):
    p = _inputs(_case(5, 2, 3, 8, 4), torch.float32, device)
    p["ids"] = torch.full_like(p["ids"], -1)
    y, *grads = _run("triton", p, torch.randn(5, 8, device=device))
    assert torch.equal(y, torch.zeros_like(y))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="interpreter only")
def test_interpreter_bf16_is_computed_exactly_through_fp32():
    """The interpreter's bf16 ``tl.dot`` is wrong; the kernels upcast there. Compared with the
    reference run in fp32 on the same bf16-rounded inputs."""
    device = torch.device("cpu")
    p = _inputs(_case(13, 2, 3, 16, 16), torch.bfloat16, device)
    y = get_backend("triton")(p["x"], p["weights"], p["ids"], p["w1"], p["w3"], p["w2"])
    p32 = {n: v.detach().float() if v.is_floating_point() else v for n, v in p.items()}
    ref = get_backend("reference")(
        p32["x"], p32["weights"], p32["ids"], p32["w1"], p32["w3"], p32["w2"]
    )
    err = (y.float() - ref).norm() / ref.norm()
    assert err < 1e-2, f"norm-relative error {err:.3g} (bf16 output rounding is ~4e-3)"
