"""Where the router sends each token: run the model over test windows, record every MoE layer's
per-token expert ids with a forward hook on its router, and accumulate a :class:`RoutingReport`.

The hook reads ``Routing.expert_ids_TK`` (``(B·L, k)``, tokens in row-major ``(b, l)`` order),
the router's own output: the model exposes no per-token ids otherwise, and in eval mode the
layer is dropless, so the router's choice is exactly what the experts compute. Load, entropy
and dropped fraction come from ``ModelOutput.router_stats``. MoE layers are numbered 0, 1, ...
in depth order, dense layers not counted, as the training logs number them (``router/layer<i>``).

Word categories are computed once over the whole analysed stretch of the file, then cut into
the same windows as the tokens, so a word split across two windows keeps its category.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from evaluation.categories import CATEGORIES, token_categories
from evaluation.routing_report import LayerRouting, RoutingReport
from evaluation.windows import batches, window_starts
from pipeline.data.word_categories import WordCategories
from pipeline.model import MoETransformer


@torch.no_grad()
def analyse_routing(
    model: MoETransformer,
    tokens: np.ndarray,
    tok_bytes: Sequence[bytes],
    words: WordCategories,
    window: int,
    max_tokens: int,
    batch_size: int,
    device: torch.device,
) -> RoutingReport:
    """Routing of the first ``max_tokens`` input tokens of ``tokens`` (a 1-D token file)."""
    spans = window_starts(len(tokens), window, max_tokens)
    end = sum(n for _, n in spans) + 1  # batches() also reads each window's target token
    categories = np.zeros(len(tokens), dtype=np.int64)
    categories[:end] = token_categories(np.asarray(tokens[:end]).tolist(), tok_bytes, words)
    layers = model.moe_layers()
    report = RoutingReport(
        {i: LayerRouting(layer.cfg.num_experts) for i, layer in enumerate(layers)}
    )
    captured: list[torch.Tensor] = []
    hooks = [
        layer.router.register_forward_hook(
            lambda _module, _args, routing: captured.append(routing.expert_ids_TK)
        )
        for layer in layers
    ]
    try:
        pairs = zip(
            batches(tokens, spans, batch_size), batches(categories, spans, batch_size), strict=True
        )
        with tqdm(total=end - 1, desc="routing", unit="tok", mininterval=2, disable=None) as bar:
            for (inputs, _), (cats, _) in pairs:
                captured.clear()
                stats = model(inputs.to(device)).router_stats
                flat_cats = cats.reshape(-1).numpy()
                for index, (ids, layer_stats) in enumerate(zip(captured, stats, strict=True)):
                    report.layers[index].add(
                        ids,
                        flat_cats,
                        entropy=layer_stats.entropy.item(),
                        dropped=layer_stats.dropped_fraction.item(),
                    )
                report.category_tokens += np.bincount(flat_cats, minlength=len(CATEGORIES))
                bar.update(inputs.numel())
    finally:
        for hook in hooks:
            hook.remove()
    return report
