"""Router losses: Switch load balance, router z-loss, sequence-level balance.

Granularity and scale. Every loss is computed per MoE layer, per micro-batch, on the local tokens
only, and is a MEAN (over tokens or over sequences), never a sum. Its value and gradient scale
therefore do not depend on how many micro-batches are accumulated or how many data-parallel
processes there are: the trainer averages the per-micro-batch losses (gradient accumulation
divides by the number of steps, DDP averages gradients), exactly as it does for the
cross-entropy. What holds exactly when a batch is split into equal micro-batches:

- ``z_loss`` (mean over tokens) and ``seq_balance`` (mean over sequences): the average of the
  micro-batch values equals the full-batch value.
- ``load_balance`` (Switch, ``E · Σ_e f_e · P_e``) is a product of two token means, so the average
  of per-micro-batch values is a different estimator from the full-batch value (as in Megatron's
  and Switch's per-micro-batch implementations). Both are 1 for perfectly balanced routing at
  any split; they coincide exactly when the micro-batches have identical routing statistics.
  Balancing per micro-batch is also the stricter objective.

The first two take the sums every router returns with its decisions (:class:`~pipeline.model.router.Routing`:
``counts_E``, ``prob_sum_E``, ``z_sum``), so the fused Triton router's own sums feed them directly
and each layer counts its assignments once per step.

Shapes (``docs/ARCHITECTURE.md``): T tokens, B sequences, L tokens per sequence (T = B·L),
K slots, E experts.
"""

from __future__ import annotations

import torch


def load_balance_loss(
    counts_E: torch.Tensor, prob_sum_E: torch.Tensor, num_tokens: int
) -> torch.Tensor:
    """Switch Transformer loss ``E · Σ_e f_e · P_e``; 1 when routing is uniform.

    ``f_e`` is the fraction of assignments routed to e (``counts_E``, not differentiable), ``P_e``
    the mean router probability of e (``prob_sum_E / num_tokens``). With k > 1, ``f`` is
    normalised over the T·k assignments so that the minimum stays 1 whatever k. A distributed run
    passes the counts summed over its ranks, so ``f`` is the global batch's.
    """
    f_E = counts_E / counts_E.sum().clamp(min=1)
    return counts_E.numel() * (f_E * (prob_sum_E / num_tokens)).sum()


def z_loss(z_sum: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """ST-MoE router z-loss: mean over tokens of ``logsumexp(logits)²`` (``z_sum`` is the sum)."""
    return z_sum / num_tokens


def seq_balance_loss(ids_TK: torch.Tensor, probs_TE: torch.Tensor, batch: int) -> torch.Tensor:
    """DeepSeek-V3 sequence-wise balance loss: the Switch loss within each sequence, averaged.

    Balancing each sequence (not only the batch) keeps single long documents from saturating a
    few experts; the mean over sequences makes the value independent of the batch size.
    """
    num_experts = probs_TE.shape[1]
    seq_ids = ids_TK.reshape(batch, -1)  # (B, L·K): the slots of each sequence
    valid = (seq_ids >= 0).float()
    counts_BE = torch.zeros(batch, num_experts, device=ids_TK.device)
    counts_BE.scatter_add_(1, seq_ids.clamp(min=0), valid)
    f_BE = counts_BE / counts_BE.sum(dim=1, keepdim=True).clamp(min=1)
    p_BE = probs_TE.reshape(batch, -1, num_experts).mean(dim=1)
    return (num_experts * (f_BE * p_BE).sum(dim=1)).mean()
