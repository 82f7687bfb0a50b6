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
        loss = torch.zeros((), dtype=torch.float32, device=hidden_ND.device)
        grad_hidden = torch.empty_like(hidden_ND) if want_h else None
        grad_weight = torch.zeros_like(weight_VD, dtype=torch.float32) if want_w else None
        for start in range(0, n, rows):
            h_CD, t_C = hidden_ND[start : start + rows], targets_N[start : start + rows]
            z_CV = torch.nn.functional.linear(h_CD, weight_VD)  # autocast's dtype, if any
            logits_CV = z_CV.float()
            logp_CV = torch.log_softmax(logits_CV, dim=1)
            picked_C = logp_CV.gather(1, t_C[:, None])
            loss -= picked_C.sum()
            if want_h or want_w:
                grad_CV = logp_CV.exp_()  # softmax, in place of the log-probabilities
                grad_CV.scatter_add_(1, t_C[:, None], torch.full_like(picked_C, -1.0))
                grad_CV = grad_CV.to(z_CV.dtype)  # the backward GEMMs in the forward's dtype
            if want_h:
                grad_hidden[start : start + rows] = torch.mm(grad_CV, weight_VD)
            if want_w:
                grad_weight += torch.mm(grad_CV.T, h_CD)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.weight_dtype, ctx.n = weight_VD.dtype, n
        return loss / n

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


def linear_cross_entropy(
    hidden_ND: torch.Tensor, weight_VD: torch.Tensor, targets_N: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``hidden_ND @ weight_VD.T`` against ``targets_N``, fp32."""
    return _LinearCrossEntropy.apply(hidden_ND, weight_VD, targets_N, torch.is_grad_enabled())
