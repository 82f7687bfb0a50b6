"""Where the router sends each token: one forward pass over test windows, every MoE layer's
per-token expert ids recorded (a :class:`RoutingTrace`). Every routing analysis is a function of
traces, so one pass of the final model serves them all.

The ids come from a forward hook on each layer's router: ``Routing.expert_ids_TK`` (``(B·L,
k)``, tokens in row-major ``(b, l)`` order), the router's own output. The model exposes no
per-token ids otherwise, and in eval mode the layer is dropless, so the router's choice is exactly
what the experts compute. Entropy and dropped fraction come from ``ModelOutput.router_stats``.
MoE layers are numbered 0, 1, ... in depth order, dense layers not counted, as the training logs
number them (``router/layer<i>``).

The tokens are the inputs of the windows of :mod:`evaluation.windows` over the first
``max_tokens`` predictable tokens of the file, so two models traced with the same arguments
route exactly the same token positions in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from evaluation.windows import batches, window_starts
from pipeline.model import MoETransformer


@dataclass(frozen=True)
class RoutingTrace:
    """``positions_N``: each routed token's offset in the token file; ``token_ids_N`` its id;
    ``expert_ids``: per MoE layer ``(N, K)`` int64 expert ids (-1 = empty slot); ``entropy`` and
    ``dropped``: per layer, the token-weighted mean of the model's per-batch router entropy
    (nats) and dropped fraction."""

    positions_N: np.ndarray
    token_ids_N: np.ndarray
    expert_ids: list[np.ndarray]
    num_experts: int
    entropy: list[float]
    dropped: list[float]

    @property
    def tokens(self) -> int:
        return len(self.positions_N)

    @property
    def top_k(self) -> int:
        return self.expert_ids[0].shape[1] if self.expert_ids else 0

    def rows_at(self, positions: np.ndarray) -> np.ndarray:
        """The rows of this trace that routed the token file's ``positions``; ``KeyError`` if
        some position was not routed."""
        row_of = np.full(max(self.positions_N.max(), positions.max()) + 1, -1, dtype=np.int64)
        row_of[self.positions_N] = np.arange(self.tokens)
        rows = row_of[positions]
        if (rows < 0).any():
            raise KeyError("positions this trace did not route")
        return rows

    def chosen(self, layer: int) -> np.ndarray:
        """``(N, E)`` bool: whether each token chose each expert in ``layer``."""
        ids_NK = self.expert_ids[layer]
        chosen_NE = np.zeros((self.tokens, self.num_experts + 1), dtype=bool)
        chosen_NE[np.arange(self.tokens)[:, None], ids_NK] = True  # -1 lands in the last column
        return chosen_NE[:, : self.num_experts]

    def counts_by(self, group_N: np.ndarray, groups: int, layer: int) -> np.ndarray:
        """``(groups, E)`` int64: how many tokens of each group (``group_N`` in ``[0, groups)``)
        chose each expert in ``layer``; a token counts once per expert it chose."""
        ids_NK = self.expert_ids[layer]
        valid = ids_NK >= 0
        flat = np.repeat(group_N, ids_NK.shape[1]).reshape(ids_NK.shape) * self.num_experts
        counts = np.bincount((flat + ids_NK)[valid], minlength=groups * self.num_experts)
        return counts.reshape(groups, self.num_experts)


@torch.no_grad()
def trace_routing(
    model: MoETransformer,
    tokens: np.ndarray,
    window: int,
    max_tokens: int,
    batch_size: int,
    device: torch.device,
    desc: str = "routing",
) -> RoutingTrace:
    """The routing of the first ``max_tokens`` input tokens of ``tokens`` (a 1-D token file)."""
    spans = window_starts(len(tokens), window, max_tokens)
    end = sum(n for _, n in spans) + 1  # batches() also reads each window's target token
    layers = model.moe_layers()
    captured: list[torch.Tensor] = []
    ids: list[list[np.ndarray]] = [[] for _ in layers]
    entropy, dropped = np.zeros(len(layers)), np.zeros(len(layers))
    positions: list[np.ndarray] = []
    hooks = [
        layer.router.register_forward_hook(
            lambda _module, _args, routing: captured.append(routing.expert_ids_TK)
        )
        for layer in layers
    ]
    try:
        pairs = zip(
            batches(tokens, spans, batch_size),
            batches(np.arange(end), spans, batch_size),
            strict=True,
        )
        with tqdm(total=end - 1, desc=desc, unit="tok", mininterval=2, disable=None) as bar:
            for (inputs, _), (offsets, _) in pairs:
                captured.clear()
                stats = model(inputs.to(device)).router_stats
                n = inputs.numel()
                for index, (ids_TK, layer_stats) in enumerate(zip(captured, stats, strict=True)):
                    ids[index].append(ids_TK.cpu().numpy().astype(np.int64))
                    entropy[index] += layer_stats.entropy.item() * n
                    dropped[index] += layer_stats.dropped_fraction.item() * n
                positions.append(offsets.reshape(-1).numpy())
                bar.update(n)
    finally:
        for hook in hooks:
            hook.remove()
    positions_N = np.concatenate(positions)
    return RoutingTrace(
        positions_N=positions_N,
        token_ids_N=np.asarray(tokens[positions_N], dtype=np.int64),
        expert_ids=[np.concatenate(per_layer) for per_layer in ids],
        num_experts=model.cfg.moe.num_experts,
        entropy=(entropy / len(positions_N)).tolist(),
        dropped=(dropped / len(positions_N)).tolist(),
    )
