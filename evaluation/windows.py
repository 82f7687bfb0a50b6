"""Cutting a token file into the model's context windows, every target predicted exactly once.

A window of ``L`` inputs ``tokens[s : s + L]`` predicts ``tokens[s + 1 : s + L + 1]``; the next
window starts at ``s + L``, so windows do not overlap and the first token of the file is the only
one never predicted (it has no context). Windows run across document boundaries, as training's
do: the model was trained to read past an end-of-text token, and the end-of-text tokens are
predicted like any other token.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def window_starts(num_tokens: int, window: int, max_targets: int | None) -> list[tuple[int, int]]:
    """``(start, length)`` of each window over the first ``max_targets`` predictable tokens.

    All windows have ``window`` inputs except possibly the last, which covers the remainder.
    """
    targets = num_tokens - 1 if max_targets is None else min(max_targets, num_tokens - 1)
    return [(s, min(window, targets - s)) for s in range(0, targets, window)]


def batches(
    tokens: np.ndarray, spans: list[tuple[int, int]], batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(inputs, targets)`` int64 tensors ``(B, T)``; only equal-length windows share a batch,
    so nothing is padded (padding would change which tokens an expert's capacity admits)."""
    for length in sorted({n for _, n in spans}, reverse=True):
        same = [s for s, n in spans if n == length]
        for i in range(0, len(same), batch_size):
            rows = np.stack([tokens[s : s + length + 1] for s in same[i : i + batch_size]])
            rows = torch.from_numpy(rows.astype(np.int64))
            yield rows[:, :-1], rows[:, 1:]
