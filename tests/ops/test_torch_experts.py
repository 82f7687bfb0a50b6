"""The torch experts op's two CPU paths (grouped GEMMs, expert by expert, each with the combine)
and the first-use measurement that picks between them: the paths must agree bit for bit,
forward and every gradient, so that the measured choice changes the speed and never the
numbers; and both compute the reference's function."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.ops import reference, torch_experts

T, D, E, F, K = 48, 16, 4, 8, 2


class _Always(dict):
    """A path cache that answers ``path`` for every problem (forces one path)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def get(self, key, default=None):
        return self.path


def _problem_inputs(weighted: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, E - 1, (T * K,), generator=g)  # expert E-1 stays empty
    ids, _ = ids.sort()
    tok = torch.randint(0, T, (T * K,), generator=g)
    offs = torch.bincount(ids, minlength=E).cumsum(0).to(torch.int32)
    leaves = {
        "x": torch.randn(T, D, generator=g),
        "w": torch.rand(T * K, generator=g) if weighted else None,
        "w13": torch.randn(E, 2 * F, D, generator=g) / D**0.5,
        "w2": torch.randn(E, D, F, generator=g) / F**0.5,
    }
    return tok, offs, {k: v.requires_grad_() for k, v in leaves.items() if v is not None}


def _run(path: str, weighted: bool, monkeypatch) -> list[torch.Tensor]:
    monkeypatch.setattr(torch_experts, "CPU_PER_GROUP_MIN_BYTES", 0)
    monkeypatch.setattr(torch_experts, "CPU_PER_GROUP_MIN_ROWS", 0)
    monkeypatch.setattr(torch_experts, "_faster", _Always(path))
    tok, offs, leaves = _problem_inputs(weighted)
    out = torch_experts.swiglu_experts(
        leaves["x"], tok, offs, leaves.get("w"), leaves["w13"], leaves["w2"]
    )
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    return [out.detach(), *(leaf.grad for leaf in leaves.values())]


@pytest.mark.parametrize("weighted", [True, False])
def test_both_cpu_paths_agree_bit_for_bit(weighted, monkeypatch):
    grouped = _run(torch_experts.GROUPED, weighted, monkeypatch)
    per_expert = _run(torch_experts.PER_EXPERT, weighted, monkeypatch)
    assert len(grouped) == (5 if weighted else 4)
    for a, b in zip(grouped, per_expert, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(grouped[-2][E - 1], torch.zeros(2 * F, D)), "empty expert: zero dw13"


@pytest.mark.parametrize("path", [torch_experts.GROUPED, torch_experts.PER_EXPERT])
@pytest.mark.parametrize("weighted", [True, False])
def test_each_path_is_the_reference_gather_experts_and_combine(path, weighted, monkeypatch):
    got = _run(path, weighted, monkeypatch)
    tok, offs, leaves = _problem_inputs(weighted)
    out = reference.combine(
        reference.swiglu_experts(leaves["x"], tok, offs, leaves["w13"], leaves["w2"]),
        tok,
        leaves.get("w"),
        T,
    )
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
    want = [out.detach(), *(leaf.grad for leaf in leaves.values())]
    assert got[0].shape == (T, D)  # summed per token: the combine is inside the op
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_first_use_measures_both_paths_then_keeps_the_faster(monkeypatch):
    monkeypatch.setattr(torch_experts, "CPU_PER_GROUP_MIN_BYTES", 0)
    monkeypatch.setattr(torch_experts, "CPU_PER_GROUP_MIN_ROWS", 0)
    monkeypatch.setattr(torch_experts, "_faster", {})
    # perf_counter readings around grouped, expert by expert, grouped, expert by expert:
    # grouped takes 2 s each time, expert by expert 1 s; a third reading would raise.
    clock = iter([0.0, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0, 6.0])
    monkeypatch.setattr(torch_experts.time, "perf_counter", lambda: next(clock))
    tok, offs, leaves = _problem_inputs(weighted=True)
    args = (leaves["x"], tok, offs, leaves["w"], leaves["w13"], leaves["w2"])
    first = torch_experts.swiglu_experts(*args)
    ((problem, path),) = torch_experts._faster.items()
    assert problem[0] == "forward" and path == torch_experts.PER_EXPERT
    again = torch_experts.swiglu_experts(*args)  # cached: no clock reading
    assert torch.equal(first, again)


def test_small_problems_run_grouped_unmeasured():
    tok, offs, leaves = _problem_inputs(weighted=True)
    x = leaves["x"].detach()
    assert torch_experts._problem("forward", x, len(tok), offs, F) is None  # far below floors
    calls = itertools.count()
    torch_experts._run("forward", x, len(tok), offs, F, lambda: next(calls), None)
    assert next(calls) == 1  # grouped ran once, nothing measured
