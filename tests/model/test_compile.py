"""``torch.compile`` traces the MoE layer on the ``triton`` backend in one graph, as eager runs it.

The Triton kernels are ``torch.library`` custom ops with fake implementations, so Dynamo puts
them in the graph as opaque calls (no graph break, ``fullgraph=True``) and AOTAutograd builds the
backward from their registered autograd formulas. Compared with the same layer run eagerly:
the output, the router losses, and the gradients of the input and of every parameter.

``softmax_topk`` runs through Inductor (the path a training run compiles, ~15 s here);
``sigmoid_bias`` through ``aot_eager`` (the same tracing, no code generation), in training mode,
where the router also accumulates its load counts outside the graph's outputs.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from pipeline.config import MoEConfig
from pipeline.model import MoELayer

D = 16
FUSED_OPS = {"moe_triton.fused_route", "moe_triton.group_by_expert", "moe_triton.grouped_swiglu",
             "moe_triton.combine"}  # fmt: skip


def _layer(router: str, device: torch.device) -> MoELayer:
    cfg = MoEConfig(num_experts=4, top_k=2, expert_hidden=8, router=router)
    layer = MoELayer(D, cfg, backend="triton")
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3, generator=g)
    return layer.to(device).train()


def _run(fn, layer: MoELayer, x_BLD: torch.Tensor, grad_BLD: torch.Tensor) -> list[torch.Tensor]:
    layer.zero_grad(set_to_none=True)
    x_BLD.grad = None
    y_BLD, aux, _ = fn(x_BLD)
    torch.autograd.backward([y_BLD, aux], [grad_BLD, torch.ones_like(aux)])
    return [y_BLD.detach(), aux.detach(), x_BLD.grad, *(p.grad for p in layer.parameters())]


def _graph_ops(counter: CompileCounterWithBackend) -> set[str]:
    return {
        str(node.target).removesuffix(".default")
        for gm in counter.graphs
        for node in gm.graph.nodes
        if node.op == "call_function" and "moe_triton" in str(node.target)
    }


@pytest.mark.parametrize(
    "router,compiler", [("softmax_topk", "inductor"), ("sigmoid_bias", "aot_eager")]
)
def test_compiled_moe_layer_matches_eager(triton_device, router, compiler):
    torch._dynamo.reset()
    layer = _layer(router, triton_device)
    g = torch.Generator().manual_seed(1)
    x_BLD = torch.randn(2, 7, D, generator=g).to(triton_device).requires_grad_()
    grad_BLD = torch.randn(2, 7, D, generator=g).to(triton_device)
    counter = CompileCounterWithBackend(compiler)
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    got = _run(compiled, layer, x_BLD, grad_BLD)
    want = _run(layer, layer, x_BLD, grad_BLD)
    assert counter.frame_count == 1
    assert _graph_ops(counter) == FUSED_OPS
    names = ["y", "aux", "dx", *(n for n, _ in layer.named_parameters())]
    # fp32: the custom ops run the same kernels; only the PyTorch code around them (the router's
    # linear, the losses) may be fused and reordered by Inductor: ~1e-7 relative.
    for name, a, b in zip(names, got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}\n{m}")
