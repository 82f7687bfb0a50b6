"""The output head and the cross-entropy as one op, in row chunks: the (N, V) logits never exist.

``linear_cross_entropy(hidden_ND, weight_VD, targets_N)`` equals
``F.cross_entropy((hidden_ND @ weight_VD.T).float(), targets_N)`` (mean over the N rows), forward
and gradients. Unfused, autograd writes the logits, reads them for the log-softmax, writes the
log-probabilities, keeps both for backward and makes two more passes over (N, V) there: at the
default model's 4096 tokens × 4096 ids that was 15 % of a CPU training step, more than the head's
GEMMs. Here each chunk of ``chunk_rows`` rows is computed, reduced to its loss and turned into its
gradient while it is still in cache, and only the gradients of the inputs, (N, D) and (V, D), are
kept: the gradient is formed in the forward (the loss is the graph's last node, so the incoming
gradient is a scalar that scales it in backward). The same idea as Liger Kernel's fused linear
cross-entropy (Hsu et al. 2024, arXiv:2410.10989) and Cut Cross-Entropy (Wijmans et al. 2024,
arXiv:2411.09009), which are Triton/CUDA only; this is plain PyTorch, so it runs on any device.

Under autocast the chunk's GEMMs run in the autocast dtype (as ``nn.Linear`` would; the
forward runs under the caller's autocast and holds all the work), the softmax in fp32. Only the
gradients autograd will ask for are formed: none under ``no_grad`` (validation), the weight's
alone when the hidden states need none. The targets must be ids of the vocabulary (no
``ignore_index``: every window of the pipeline has a target at every position).
"""

from __future__ import annotations

import torch

# fp32 logits per chunk: 512 rows at V = 4096. Fastest of 1-64 MiB on the build machine (AMD
# EPYC, 2 threads) for the head + loss forward and backward of 4096 tokens at d_model 128 and 512
# (8 MiB: 106 and 320 ms; 1 MiB: 136 and 447 ms; unchunked: 127 and 326 ms).
CHUNK_BYTES = 8 << 20


def chunk_rows(vocab_size: int) -> int:
    return max(16, CHUNK_BYTES // (4 * vocab_size))


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden_ND, weight_VD, targets_N, grad_enabled):
        n = hidden_ND.shape[0]
        rows = chunk_rows(weight_VD.shape[0])
        # needs_input_grad says requires_grad, not whether autograd records: hence grad_enabled.
        want_h, want_w = (grad_enabled and needs for needs in ctx.needs_input_grad[:2])
        picked_N = torch.empty(n, dtype=torch.float32, device=hidden_ND.device)
        grad_hidden = torch.empty_like(hidden_ND) if want_h else None
        grad_weight = torch.zeros_like(weight_VD, dtype=torch.float32) if want_w else None
        for start in range(0, n, rows):
            h_CD, t_C = hidden_ND[start : start + rows], targets_N[start : start + rows]
            z_CV = torch.nn.functional.linear(h_CD, weight_VD)  # autocast's dtype, if any
            logits_CV = z_CV.float()
            # One pass over the chunk gives the softmax, which is the gradient but for the -1 at
            # the target, and its target entries give the loss: a log-softmax and then its
            # exp() would be two passes (8 MiB each way per chunk here, ~7 ms per default step).
            probs_CV = torch.softmax(logits_CV, dim=1)
            picked_C = probs_CV.gather(1, t_C[:, None])
            picked_N[start : start + rows] = picked_C[:, 0]
            if want_h or want_w:
                grad_CV = probs_CV.scatter_add_(1, t_C[:, None], torch.full_like(picked_C, -1.0))
                grad_CV = grad_CV.to(z_CV.dtype)  # the backward GEMMs in the forward's dtype
            if want_h:
                grad_hidden[start : start + rows] = torch.mm(grad_CV, weight_VD)
            if want_w:
                grad_weight += torch.mm(grad_CV.T, h_CD)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype, ctx.n = weight_VD.dtype, n
        return -_target_log_probs(picked_N, hidden_ND, weight_VD, targets_N).sum() / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.n
        return (
            None if grad_hidden is None else grad_hidden * scale,
            None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
            None,
            None,
        )


def _target_log_probs(
    picked_N: torch.Tensor,
    hidden_ND: torch.Tensor,
    weight_VD: torch.Tensor,
    targets_N: torch.Tensor,
) -> torch.Tensor:
    """``log_softmax(logits)[target]`` per row from the target probabilities ``picked_N``. A
    probability below fp32's normal range (a target ~87 nats under the row's log-sum-exp) has
    lost precision or is 0, so those rows' logits are formed again and their log-softmax is taken
    exactly; checking costs one host-device synchronisation per forward."""
    logp_N = picked_N.log()
    low = (picked_N < torch.finfo(torch.float32).tiny).nonzero()[:, 0]
    if low.numel():
        z_RV = torch.nn.functional.linear(hidden_ND[low], weight_VD).float()
        logp_N[low] = z_RV.gather(1, targets_N[low, None])[:, 0] - z_RV.logsumexp(dim=1)
    return logp_N


def linear_cross_entropy(
    hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden_ND @ weight_VD.T`` against ``targets_N``, fp32."""
    return _LinearCrossEntropy.apply(hidden_ND, weight_VD, targets_N, torch.is_grad_enabled())
