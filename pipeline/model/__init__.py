"""The MoE transformer in pure PyTorch: layers, routers, router losses and the MoE layer.

Expert compute is delegated to a backend from :mod:`pipeline.ops` (chosen by
``train.model.moe.backend``); nothing here depends on which one runs.
"""

from pipeline.model.layers import MLP, Attention, RMSNorm, RotaryEmbedding
from pipeline.model.moe import MoELayer, RouterStats
from pipeline.model.router import Router, Routing, build_router, expert_capacity
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
    "expert_capacity",
    "is_moe_layer",
]
