"""The fused head + cross-entropy against ``F.cross_entropy`` of the head's logits: the loss and
both gradients, on random inputs, across chunk boundaries, under bf16 autocast and without
gradients; and the model's training forward against its logits."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import ModelConfig
from pipeline.model import MoETransformer
from pipeline.ops import linear_cross_entropy as lce
from pipeline.train.module import token_cross_entropy


def reference(hidden, weight, targets):
    return F.cross_entropy((hidden @ weight.T).float(), targets)


def loss_and_grads(fn, hidden, weight, targets, grad_scale=1.0):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fn(h, w, targets)
    (loss * grad_scale).backward()
    return loss, h.grad, w.grad


# 37 rows against chunks of 16: two full chunks and a ragged one.
@pytest.mark.parametrize("n, vocab", [(37, 64), (5, 64), (16, 128)])
def test_matches_unfused_loss_and_gradients(monkeypatch, n, vocab):
    monkeypatch.setattr(lce, "CHUNK_BYTES", 16 * 4 * vocab)  # 16 rows per chunk
    g = torch.Generator().manual_seed(n)
    hidden, weight = torch.randn(n, 24, generator=g), torch.randn(vocab, 24, generator=g)
    targets = torch.randint(vocab, (n,), generator=g)
    # An incoming gradient other than 1 (a loss weight) must scale both gradients.
    got = loss_and_grads(lce.linear_cross_entropy, hidden, weight, targets, grad_scale=0.3)
    want = loss_and_grads(reference, hidden, weight, targets, grad_scale=0.3)
    for name, a, b in zip(("loss", "hidden grad", "weight grad"), got, want, strict=True):
        torch.testing.assert_close(
            a, b, rtol=1e-5, atol=1e-6, msg=lambda m, name=name: f"{name}: {m}"
        )


def test_a_target_below_fp32s_normal_range_keeps_its_exact_loss(monkeypatch):
    """A target 120 nats under its row's log-sum-exp has a probability of ~1e-52, 0 in fp32: its
    row's loss is taken from the logits again, not as -log(0)."""
    monkeypatch.setattr(lce, "CHUNK_BYTES", 2 * 4 * 8)  # 2 rows per chunk: the row in chunk 2
    hidden = torch.tensor([[0.1], [0.2], [1.0], [0.3]])
    weight = torch.tensor([[-60.0], [60.0], [0.5], [1.0], [2.0], [-1.0], [3.0], [0.0]])
    targets = torch.tensor([3, 2, 0, 7])  # row 2: logit -60 against 60
    got = loss_and_grads(lce.linear_cross_entropy, hidden, weight, targets)
    want = loss_and_grads(reference, hidden, weight, targets)
    assert 4 * got[0].item() > 120  # the row's loss is in the mean
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def mm_calls(monkeypatch) -> list:
    """The output dtypes of the op's gradient GEMMs (``torch.mm``), as they are called."""
    calls, mm = [], torch.mm

    def spy(a, b):
        calls.append(out := mm(a, b))
        return out

    monkeypatch.setattr(torch, "mm", spy)
    return calls


def test_only_the_gradients_autograd_asks_for_are_formed(monkeypatch):
    monkeypatch.setattr(lce, "CHUNK_BYTES", 16 * 4 * 32)  # 16 rows per chunk: 2 chunks
    calls = mm_calls(monkeypatch)
    hidden, weight, targets = torch.randn(20, 8), torch.randn(32, 8), torch.randint(32, (20,))
    loss = lce.linear_cross_entropy(hidden, weight, targets)
    assert not loss.requires_grad and calls == []
    torch.testing.assert_close(loss, reference(hidden, weight, targets))
    weight.requires_grad_()
    with torch.no_grad():  # validation: parameters require grad, nothing is recorded
        lce.linear_cross_entropy(hidden, weight, targets)
    assert calls == []
    lce.linear_cross_entropy(hidden, weight, targets).backward()  # the weight's alone
    assert [c.shape for c in calls] == [(32, 8), (32, 8)]
    want = loss_and_grads(reference, hidden, weight.detach(), targets)[2]
    torch.testing.assert_close(weight.grad, want)


def test_bf16_autocast_runs_the_gemms_in_bf16_and_keeps_fp32_gradients(monkeypatch):
    g = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(40, 32, generator=g), torch.randn(96, 32, generator=g)
    targets = torch.randint(96, (40,), generator=g)
    calls = mm_calls(monkeypatch)
    with torch.autocast("cpu", torch.bfloat16):
        got = loss_and_grads(lce.linear_cross_entropy, hidden, weight, targets)
        want = loss_and_grads(reference, hidden, weight, targets)
    assert calls and all(c.dtype == torch.bfloat16 for c in calls)
    assert got[0].dtype == torch.float32 and got[2].dtype == torch.float32
    for a, b in zip(got, want, strict=True):  # bf16 products on both sides: bf16 tolerance
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_training_forward_equals_the_logits_path():
    """The model's forward with targets (training) against its logits (eval) + cross-entropy:
    same loss, same gradient for every parameter, the tied head/embedding included."""
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=16,
                      moe={"num_experts": 4, "top_k": 2, "expert_hidden": 16})  # fmt: skip
    assert cfg.tie_embeddings
    idx = torch.randint(50, (3, 17))
    grads = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = MoETransformer(cfg, vocab_size=50).train()
        if fused:
            out = model(idx[:, :-1], idx[:, 1:])
            assert out.logits is None
            ce = out.cross_entropy
        else:
            ce = token_cross_entropy(model(idx[:, :-1]).logits, idx[:, 1:])
        ce.backward()
        grads.append((ce.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ce_fused, g_fused), (ce_plain, g_plain) = grads
    torch.testing.assert_close(ce_fused, ce_plain)
    assert g_fused.keys() == g_plain.keys()
    for name in g_fused:
        torch.testing.assert_close(g_fused[name], g_plain[name], rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f"{name}: {m}")  # fmt: skip
