"""The MoE transformer as ``nn.Module``s: dense layers, the MoE layer and its named parts.

``moe`` (the layer: router → capacity → dispatch → experts → combine), ``router``,
``capacity``, ``dispatch`` (local and expert-parallel), ``experts``, ``losses``,
``routing_stats``, ``backends`` (which implementation runs: the one ``auto`` rule),
``layers`` (norm, rotary, attention, dense MLP), ``transformer`` and ``upcycling`` (a dense
model's weights as a MoE model's initial weights). The arithmetic lives in
:mod:`pipeline.ops` (and the Triton kernels under it, :mod:`pipeline.kernels`); nothing here
depends on which backend runs it.
"""

from pipeline.model.layers import MLP, Attention, RMSNorm, RotaryEmbedding
from pipeline.model.moe import MoELayer
from pipeline.model.router import Router, Routing, build_router
from pipeline.model.routing_stats import RouterStats
from pipeline.model.transformer import ModelOutput, MoETransformer, is_moe_layer

__all__ = [
    "MLP",
    "Attention",
    "ModelOutput",
    "MoELayer",
    "MoETransformer",
    "RMSNorm",
    "RotaryEmbedding",
    "Router",
    "RouterStats",
    "Routing",
    "build_router",
    "is_moe_layer",
]
