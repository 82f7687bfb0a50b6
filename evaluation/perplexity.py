"""Perplexity and bits per byte of a token file under the model.

* ``ppl = exp(mean NLL)`` over the predicted tokens (see :mod:`evaluation.windows`: every token
  but the file's first, or the first ``max_tokens`` of them). It depends on the tokenizer, so it
  only compares models that share one.
* ``bits_per_byte = total NLL (nats) / ln 2 / bytes``, where ``bytes`` is the number of UTF-8
  bytes of text the predicted tokens stand for, counted exactly from the byte-level vocabulary
  (:mod:`evaluation.token_bytes`); an end-of-text token stands for no text, so it adds 0 bytes,
  while its NLL stays in the numerator: the document boundary is information the model has to
  encode. Bits per byte is tokenizer-independent, so it compares models across vocabularies.

The numbers are summed in float64 on the host, so the totals do not depend on batch size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from evaluation.windows import batches, window_starts
from pipeline.errors import PipelineError

Forward = Callable[[torch.Tensor], torch.Tensor]  # (B, T) token ids -> (B, T, V) logits


@torch.no_grad()
def token_nll_sum(forward: Forward, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Summed next-token NLL (nats) of ``targets`` given ``inputs``, logits upcast to fp32."""
    logits = forward(inputs).float()
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()


def perplexity(
    forward: Forward,
    tokens: np.ndarray,
    byte_lengths: np.ndarray,
    window: int,
    max_tokens: int | None,
    batch_size: int,
    device: torch.device,
    desc: str = "perplexity",
) -> dict[str, float]:
    """``{"tokens", "bytes", "nll", "ppl", "bits_per_byte"}`` over ``tokens`` (a 1-D array).

    ``nll`` is the mean token NLL in nats; ``tokens``/``bytes`` count what was evaluated.
    """
    spans = window_starts(len(tokens), window, max_tokens)
    num_targets = sum(n for _, n in spans)
    if num_targets == 0:
        raise PipelineError(
            f"{desc}: the token file holds {len(tokens)} token(s), nothing to predict"
        )
    total_nll = 0.0
    with tqdm(total=num_targets, desc=desc, unit="tok", mininterval=2, disable=None) as bar:
        for inputs, targets in batches(tokens, spans, batch_size):
            total_nll += token_nll_sum(forward, inputs.to(device), targets.to(device))
            bar.update(targets.numel())
    target_ids = np.asarray(tokens[1 : 1 + num_targets], dtype=np.int64)
    num_bytes = int(byte_lengths[target_ids].sum())
    mean_nll = total_nll / num_targets
    return {
        "tokens": num_targets,
        "bytes": num_bytes,
        "nll": mean_nll,
        "ppl": math.exp(mean_nll),
        "bits_per_byte": total_nll / math.log(2) / num_bytes if num_bytes else math.nan,
    }
