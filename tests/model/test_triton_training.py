"""The whole MoE transformer trains with ``backend=triton`` as it does with ``backend=torch``."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ModelConfig, MoEConfig
from pipeline.model import MoETransformer

VOCAB = 61
STEPS = 4


def _losses(backend: str, device: torch.device, moe: dict) -> list[float]:
    cfg = ModelConfig(
        d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, dense_hidden=48, max_seq_len=16,
        moe=MoEConfig(num_experts=4, top_k=2, expert_hidden=24, **moe),
    )  # fmt: skip
    torch.manual_seed(0)
    model = MoETransformer(cfg, VOCAB, backend=backend).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(0, VOCAB, (STEPS, 2, 16), generator=torch.Generator().manual_seed(1))
    out = []
    for batch in idx.to(device):
        result = model(batch[:, :-1])
        ce = torch.nn.functional.cross_entropy(result.logits.flatten(0, 1), batch[:, 1:].flatten())
        loss = ce + result.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        model.update_router_biases()
        out.append(loss.item())
    return out


# fp32: the backends differ by rounding (~1e-6 relative per step); after a few Adam steps on a
# lr of 1e-2 that stays far below 1e-4, while a wrong gradient changes the curve at step 2.
@pytest.mark.parametrize(
    "moe",
    [{}, {"capacity_factor": 0.75, "drop_policy": "position"}, {"router": "sigmoid_bias"}],
    ids=["dropless", "capacity", "sigmoid_bias"],
)
def test_triton_backend_trains_like_torch_backend(triton_device, moe):
    got, want = _losses("triton", triton_device, moe), _losses("torch", triton_device, moe)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-4, atol=1e-5)
    assert want[-1] < want[0], "the loss should fall in a few steps"
