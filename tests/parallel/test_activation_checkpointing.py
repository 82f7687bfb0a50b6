"""``train.parallel.activation_checkpointing``: recomputing each block in the backward changes
memory, not arithmetic. The recomputation runs the same fp32 CPU kernels on the same inputs, so
losses, every gradient and the weights after AdamW steps are compared exactly."""

from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config import ModelConfig, ParallelConfig
from pipeline.model import MoETransformer
from pipeline.parallel.setup import parallelize

VOCAB, BATCH, SEQ = 64, 3, 16


def tiny_model(router: str, balance: str = "micro") -> MoETransformer:
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate(
        {
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "dense_hidden": 48,
            "max_seq_len": SEQ,
            "moe": {
                "num_experts": 4,
                "top_k": 2,
                "expert_hidden": 16,
                "router": router,
                "balance": balance,
                "aux_loss_weight": 0.01,
                "z_loss_weight": 0.001,
            },
        }
    )
    return MoETransformer(cfg, VOCAB)


@pytest.mark.parametrize("router", ["softmax_topk", "sigmoid_bias"])
def test_checkpointed_blocks_give_the_same_losses_gradients_and_steps(router):
    """Also the sigmoid router's balancing bias: the recomputed forward routes again, and the
    bias it moves after the step must still be the plain run's."""
    plain = tiny_model(router)
    recomputed = copy.deepcopy(plain)
    parallelize(recomputed, ParallelConfig(activation_checkpointing=True), mesh=None)
    calls = []
    recomputed.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2) for m in (plain, recomputed)]
    for step in range(3):
        idx = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(step))
        losses = []
        for model in (plain, recomputed):
            out = model(idx)
            loss = torch.nn.functional.cross_entropy(
                out.logits.flatten(0, 1), idx.roll(-1, dims=1).flatten()
            )
            (loss + out.aux_loss).backward()
            losses.append((loss.detach(), out.aux_loss.detach()))
        assert calls == [1, 1] * (step + 1)  # the block ran again in the backward
        assert losses[0] == losses[1]
        for (name, p), q in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)
        for model, opt in zip((plain, recomputed), opts, strict=True):
            opt.step()
            opt.zero_grad()
            model.update_router_biases()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(recomputed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_step_counts_advance_once_per_micro_batch_under_recomputation():
    """Two accumulated micro-batches per step, sigmoid_bias with global balance: the recomputed
    forward in each backward must neither add its counts again (the double count the sigmoid
    router's own load used to have; torchtitan's open TODO) nor see the step's counts moved by
    its own first pass, which would change the global balance loss it recomputes. So: the same
    losses and gradients bit for bit, and the step's counts, before the bias update, are exactly
    the sum of the micro-batches' counts, as in the plain run."""
    plain = tiny_model("sigmoid_bias", balance="global")
    recomputed = copy.deepcopy(plain)
    parallelize(recomputed, ParallelConfig(activation_checkpointing=True), mesh=None)
    calls = []
    recomputed.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))
    for step in range(2):
        counted = {id(m): [] for m in (plain, recomputed)}
        for micro in range(2):
            seed = torch.Generator().manual_seed(10 * step + micro)
            idx = torch.randint(0, VOCAB, (BATCH, SEQ), generator=seed)
            for model in (plain, recomputed):
                out = model(idx)
                (out.aux_loss / 2).backward()
                counted[id(model)].append(torch.stack([s.counts for s in out.router_stats]))
        assert len(calls) == 4 * (step + 1)  # every micro-batch's block ran again
        for (name, p), q in zip(plain.named_parameters(), recomputed.parameters(), strict=True):
            torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)
        for model in (plain, recomputed):
            step_counts = torch.stack(
                [layer.step_counts_E + layer.micro_counts_E for layer in model.moe_layers()]
            )
            assert torch.equal(step_counts, sum(counted[id(model)])), "counted once each"
            model.update_router_biases()
            model.zero_grad()
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(recomputed.state_dict()[key], value, rtol=0, atol=0, msg=key)
