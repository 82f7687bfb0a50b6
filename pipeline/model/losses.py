"""Router losses: the load-balancing loss at three scopes, and the router z-loss.

Which tokens the balance loss balances is ``train.model.moe.balance`` (one weight,
``aux_loss_weight``, for whichever scope):

- ``micro`` (the default, Switch Transformer, Fedus et al. 2021): ``E · Σ_e f_e · P_e`` with the
  expert fractions ``f`` of one micro-batch, counted over all data-parallel and expert-parallel
  ranks (the MoE layer sums the counts over its ``stats_group``), and ``P`` the rank's own mean
  router probability;
- ``sequence`` (DeepSeek-V3's sequence-wise loss, arXiv:2412.19437, section 2.1.2): the same within
  each sequence, averaged over sequences: balances every document, the strictest scope;
- ``global`` (Qiu et al. 2025, "Demons in the Detail", arXiv:2501.11873): ``f`` counted over
  the whole optimizer step, every micro-batch and every rank, so a micro-batch of one domain
  may use few experts as long as the step as a whole is balanced. ``P`` stays local (each rank's
  mean over its micro-batch); the trainer's mean over micro-batches and ranks then makes the
  objective exactly ``E · Σ_e f_step · P_step``, the full-batch loss. Across ranks the counts
  are summed before the loss, so 2 ranks × B/2 give the loss and router gradient of 1 × B.
  Across accumulated micro-batches a micro-batch runs its backward before the later ones are
  routed: the trainer routes the whole step once beforehand, without gradients, and hands the
  layers its counts (:mod:`pipeline.train.step_routing`), which makes k × B/k exact too. Without
  them (a plain PyTorch loop) the layer uses Megatron-Core's estimate
  (``_apply_global_aux_loss`` in ``megatron/core/transformer/moe/router.py``): the counts of the
  step's micro-batches so far, exact at the last one; its measured deviation from 1 × B is in
  ``bench/RESULTS.md`` ("Global-batch balance under accumulation", ``bench/global_balance.py``).

Granularity and scale. Every loss is computed per MoE layer, per micro-batch, on the local tokens
only, and is a MEAN (over tokens or over sequences), never a sum. Its value and gradient scale
therefore do not depend on how many micro-batches are accumulated or how many data-parallel
processes there are: the trainer averages the per-micro-batch losses (gradient accumulation
divides by the number of steps, DDP averages gradients), exactly as it does for the
cross-entropy. What holds exactly when a batch is split into equal micro-batches:

- ``z_loss`` (mean over tokens) and ``seq_balance`` (mean over sequences): the average of the
  micro-batch values equals the full-batch value.
- ``load_balance`` (``micro``) is a product of two token means, so the average of per-micro-batch
  values is a different estimator from the full-batch value (as in Megatron's and Switch's
  per-micro-batch implementations). Both are 1 for perfectly balanced routing at any split; they
  coincide exactly when the micro-batches have identical routing statistics. The mean of the
  ``global_balance`` values is the full-batch value.

The losses take the sums every router returns with its decisions
(:class:`~pipeline.model.router.Routing`: ``counts_E``, ``prob_sum_E``, ``z_sum``), so the fused
Triton router's own sums feed them directly and each layer counts its assignments once per step.

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
    passes the counts summed over its ranks, so ``f`` is the global batch's; the ``global`` scope
    passes the step's counts so far (see the module docstring).
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
