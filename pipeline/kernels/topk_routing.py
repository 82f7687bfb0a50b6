"""The fused router: logits → scores → (biased) top-k → weights, with the loss sums, in one pass.

Forward (``_route_fwd_kernel``), one program per block of BT tokens holding all E experts (padded
to a power of two): softmax or sigmoid of the logits, top-k by k rounds of argmax with the chosen
column masked out (ties go to the lower expert id), optional renormalisation over the k, and:

- ``probs_TE``: the per-token distribution the balance losses use (the softmax, or the sigmoid
  scores divided by their sum: DeepSeek-V3's ``s'``);
- per-block partial sums of the token counts per expert, of ``probs`` per expert, and of
  ``logsumexp(logits)²`` (the z-loss). Partials (summed by the launcher in a fixed order), not
  atomics, so the sums are the same bit for bit on every run.

Selection: softmax routing ranks the logits (the same order as the probabilities, without their
rounding); sigmoid routing ranks ``sigmoid(logits) + bias``, the bias only selecting: the
weights are the unbiased scores. Group-limited routing (``n_groups > 1``, DeepSeek-V3) first
ranks each token's groups of ``E / n_groups`` consecutive experts by the sum of their two highest
selection scores (softmax: the probabilities, as a sum of logits would rank differently;
sigmoid: the biased scores), keeps the best ``topk_groups`` by ``topk_groups`` rounds of argmax
(ties to the lower group id) and masks the other groups' experts out of the top-k. Selection
only: the backward reads the chosen ids, so it is the same for grouped routing.

Backward (``_route_bwd_kernel``): recomputes the scores from the logits and sends the gradients
of the weights, of ``probs``, of the per-expert ``probs`` sums and of the z-loss sum back to the
logits. With renormalisation ``w_j = q_j / Σq``, so ``dq_j = (dw_j - Σ_i dw_i w_i) / Σq``.

Shapes (``docs/ARCHITECTURE.md``): T tokens, E experts, K slots per token, J token blocks (one
program each).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pipeline.kernels.launch import (
    KernelInputError,
    acc_dtype,
    check,
    check_device,
    interpreting,
    pow2,
)

SCORES = ("softmax", "sigmoid")
LOGIT_DTYPES = (torch.float32, torch.float64)  # the router computes its logits in fp32


@triton.jit
def _scores(logits_ptr, T, E, stride_t, block, BT: tl.constexpr, E_PAD: tl.constexpr,
            ACC: tl.constexpr):  # fmt: skip
    """Token and expert indices with their masks, the logits (padded experts -inf, padded
    tokens 0, so no row is all -inf), the softmax and logsumexp."""
    t = block * BT + tl.arange(0, BT)
    e = tl.arange(0, E_PAD)
    t_ok, e_ok = t < T, e < E
    ok = t_ok[:, None] & e_ok[None, :]
    logits = tl.load(
        logits_ptr + t[:, None].to(tl.int64) * stride_t + e[None, :], mask=ok, other=0.0
    )
    logits = tl.where(e_ok[None, :], logits.to(ACC), float("-inf"))
    shifted = logits - tl.max(logits, axis=1)[:, None]
    ex = tl.exp(shifted)
    total = tl.sum(ex, axis=1)
    softmax = ex / total[:, None]
    lse = tl.max(logits, axis=1) + tl.log(total)
    return t, e, t_ok, e_ok, logits, softmax, lse


@triton.jit
def _keep_top_groups(key, group_key, e, e_ok, N_GROUPS: tl.constexpr, TOPK_GROUPS: tl.constexpr,
                     GROUP_SIZE: tl.constexpr, G_PAD: tl.constexpr, BT: tl.constexpr,
                     E_PAD: tl.constexpr, ACC: tl.constexpr):  # fmt: skip
    """``key`` with -inf outside each token's ``TOPK_GROUPS`` best groups, a group ranked by
    the sum of the two highest ``group_key`` values among its experts."""
    group_of = e // GROUP_SIZE
    g = tl.arange(0, G_PAD)
    group_score = tl.full((BT, G_PAD), float("-inf"), ACC)
    for i in range(N_GROUPS):
        members = tl.where(((group_of == i) & e_ok)[None, :], group_key, float("-inf"))
        first = tl.argmax(members, axis=1, tie_break_left=True)
        second = tl.max(tl.where(e[None, :] == first[:, None], float("-inf"), members), axis=1)
        top2 = tl.max(members, axis=1) + second
        group_score = tl.where(g[None, :] == i, top2[:, None], group_score)
    kept = tl.zeros((BT, E_PAD), dtype=tl.int1)  # experts of the groups picked so far
    for _ in range(TOPK_GROUPS):
        pick = tl.argmax(group_score, axis=1, tie_break_left=True)
        kept |= group_of[None, :] == pick[:, None]
        group_score = tl.where(g[None, :] == pick[:, None], float("-inf"), group_score)
    return tl.where(kept, key, float("-inf"))


@triton.jit
def _route_fwd_kernel(
    logits_ptr, bias_ptr, w_ptr, ids_ptr, probs_ptr, counts_ptr, psum_ptr, zsum_ptr,
    T, E, K, stride_t,
    SIGMOID: tl.constexpr, HAS_BIAS: tl.constexpr, RENORM: tl.constexpr, ACC: tl.constexpr,
    BT: tl.constexpr, E_PAD: tl.constexpr, K_PAD: tl.constexpr, N_GROUPS: tl.constexpr,
    TOPK_GROUPS: tl.constexpr, GROUP_SIZE: tl.constexpr, G_PAD: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    t, e, t_ok, e_ok, logits, softmax, lse = _scores(
        logits_ptr, T, E, stride_t, block, BT, E_PAD, ACC
    )
    if SIGMOID:
        score = tl.sigmoid(logits)  # 0 in padded columns
        probs = score / tl.sum(score, axis=1)[:, None]
        key = score
        if HAS_BIAS:
            key += tl.load(bias_ptr + e, mask=e_ok, other=0.0).to(ACC)[None, :]
        key = tl.where(e_ok[None, :], key, float("-inf"))
    else:
        score = softmax
        probs = softmax
        key = logits
    if N_GROUPS > 1:
        key = _keep_top_groups(
            key, key if SIGMOID else softmax, e, e_ok, N_GROUPS, TOPK_GROUPS, GROUP_SIZE, G_PAD,
            BT, E_PAD, ACC,
        )  # fmt: skip
    slots = tl.arange(0, K_PAD)
    w_tile = tl.zeros((BT, K_PAD), dtype=ACC)
    ids_tile = tl.zeros((BT, K_PAD), dtype=tl.int64)
    chosen = tl.zeros((BT, E_PAD), dtype=tl.int32)
    for k in range(K):
        pick = tl.argmax(key, axis=1, tie_break_left=True)
        hit = e[None, :] == pick[:, None]
        q = tl.sum(tl.where(hit, score, 0.0), axis=1)
        w_tile = tl.where(slots[None, :] == k, q[:, None], w_tile)
        ids_tile = tl.where(slots[None, :] == k, pick[:, None].to(tl.int64), ids_tile)
        chosen += hit.to(tl.int32)
        key = tl.where(hit, float("-inf"), key)
    if RENORM:
        w_tile = w_tile / tl.sum(w_tile, axis=1)[:, None]
    tk_ok = t_ok[:, None] & (slots[None, :] < K)
    tk_at = t[:, None].to(tl.int64) * K + slots[None, :]
    tl.store(w_ptr + tk_at, w_tile.to(w_ptr.dtype.element_ty), mask=tk_ok)
    tl.store(ids_ptr + tk_at, ids_tile, mask=tk_ok)
    te_ok = t_ok[:, None] & e_ok[None, :]
    tl.store(probs_ptr + t[:, None].to(tl.int64) * E + e[None, :],
             probs.to(probs_ptr.dtype.element_ty), mask=te_ok)  # fmt: skip
    part = block * E_PAD + e
    tl.store(counts_ptr + part, tl.sum(tl.where(t_ok[:, None], chosen, 0), axis=0))
    tl.store(psum_ptr + part, tl.sum(tl.where(te_ok, probs, 0.0), axis=0))
    tl.store(zsum_ptr + block, tl.sum(tl.where(t_ok, lse * lse, 0.0), axis=0))


@triton.jit
def _route_bwd_kernel(
    logits_ptr, ids_ptr, dw_ptr, dprobs_ptr, dpsum_ptr, dzsum_ptr, dlogits_ptr,
    T, E, K, stride_t,
    SIGMOID: tl.constexpr, RENORM: tl.constexpr, ACC: tl.constexpr,
    BT: tl.constexpr, E_PAD: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    t, e, t_ok, e_ok, logits, softmax, lse = _scores(
        logits_ptr, T, E, stride_t, block, BT, E_PAD, ACC
    )
    score = tl.sigmoid(logits) if SIGMOID else softmax
    # Gradient reaching the selected scores, scattered into the (T, E) tile.
    dw_dense = tl.zeros((BT, E_PAD), dtype=ACC)
    selected = tl.zeros((BT, E_PAD), dtype=tl.int1)
    q_sum = tl.zeros((BT,), dtype=ACC)
    dw_dot_q = tl.zeros((BT,), dtype=ACC)
    for k in range(K):
        pick = tl.load(ids_ptr + t * K + k, mask=t_ok, other=-1)
        dw = tl.load(dw_ptr + t * K + k, mask=t_ok, other=0.0).to(ACC)
        hit = e[None, :] == pick[:, None]
        q = tl.sum(tl.where(hit, score, 0.0), axis=1)
        dw_dense += tl.where(hit, dw[:, None], 0.0)
        selected |= hit
        q_sum += q
        dw_dot_q += dw * q
    if RENORM:
        q_sum = tl.where(t_ok, q_sum, 1.0)
        dw_dense = (dw_dense - (dw_dot_q / q_sum)[:, None]) / q_sum[:, None]
    dscore = tl.where(selected, dw_dense, 0.0)
    te_ok = t_ok[:, None] & e_ok[None, :]
    dprobs = tl.load(dprobs_ptr + t[:, None].to(tl.int64) * E + e[None, :], mask=te_ok, other=0.0)
    dprobs = dprobs.to(ACC) + tl.load(dpsum_ptr + e, mask=e_ok, other=0.0).to(ACC)[None, :]
    dprobs = tl.where(te_ok, dprobs, 0.0)
    if SIGMOID:  # probs = score / Σ score, and score = sigmoid(logits)
        score_sum = tl.where(t_ok, tl.sum(score, axis=1), 1.0)
        probs = score / score_sum[:, None]
        dscore += (dprobs - tl.sum(dprobs * probs, axis=1)[:, None]) / score_sum[:, None]
        dlogits = dscore * score * (1.0 - score)
    else:  # probs = score = softmax(logits)
        g = dscore + dprobs
        dlogits = softmax * (g - tl.sum(g * softmax, axis=1)[:, None])
    dz = tl.load(dzsum_ptr).to(ACC)
    dlogits += 2.0 * dz * lse[:, None] * softmax
    tl.store(dlogits_ptr + t[:, None].to(tl.int64) * E + e[None, :],
             dlogits.to(dlogits_ptr.dtype.element_ty), mask=te_ok)  # fmt: skip


@dataclass(frozen=True)
class TopKRoute:
    """The fused router's outputs (all on the logits' device, in their dtype unless stated).

    ``weights_TK``, ``ids_TK`` (int64, slots in descending score order), ``probs_TE``,
    ``counts_E`` (int32: assignments per expert), ``prob_sum_E`` (``Σ_t probs[t, e]``),
    ``z_sum`` (0-dim: ``Σ_t logsumexp(logits[t])²``).
    """

    weights_TK: torch.Tensor
    ids_TK: torch.Tensor
    probs_TE: torch.Tensor
    counts_E: torch.Tensor
    prob_sum_E: torch.Tensor
    z_sum: torch.Tensor


def _block_tokens(kernel: object, t: int, e_pad: int) -> int:
    """Interpreter: up to 256 tokens per program (each program costs ~5 ms there). GPU: a
    (BT, E_PAD) tile of at most 4096 elements, so a large E keeps the tile in registers."""
    if interpreting(kernel):
        return pow2(min(t, 256), 2)
    return max(2, min(64, 4096 // e_pad))


def _check_args(logits_TE: torch.Tensor, k: int, score: str) -> tuple[int, int]:
    check("logits_TE", logits_TE, shape=(None, None), dtypes=LOGIT_DTYPES)
    t, e = logits_TE.shape
    if score not in SCORES:
        raise KernelInputError(f"score: expected one of {SCORES}, got {score!r}")
    if not 1 <= k <= e:
        raise KernelInputError(f"k: expected 1 <= k <= {e} (the number of experts), got {k}")
    return t, e


def _check_groups(e: int, k: int, n_groups: int, topk_groups: int) -> None:
    if n_groups == 1:
        return
    if n_groups < 1 or e % n_groups or e // n_groups < 2:
        raise KernelInputError(
            f"n_groups: expected 1, or a divisor of {e} (the number of experts) that leaves "
            f"groups of at least 2, got {n_groups}"
        )
    if not 1 <= topk_groups <= n_groups or k > topk_groups * (e // n_groups):
        raise KernelInputError(
            f"topk_groups: expected 1 <= topk_groups <= {n_groups} groups holding at least "
            f"k = {k} experts, got {topk_groups}"
        )


def topk_route(
    logits_TE: torch.Tensor,
    k: int,
    *,
    score: str = "softmax",
    renormalize: bool = True,
    bias_E: torch.Tensor | None = None,
    n_groups: int = 1,
    topk_groups: int = 1,
) -> TopKRoute:
    """Top-``k`` routing of ``logits_TE`` (see the module docstring); ``bias_E`` only with
    ``score="sigmoid"``; ``n_groups > 1`` limits each token to its ``topk_groups`` best groups."""
    t, e = _check_args(logits_TE, k, score)
    _check_groups(e, k, n_groups, topk_groups)
    if bias_E is not None:
        if score != "sigmoid":
            raise KernelInputError("bias_E: a selection bias is only defined for sigmoid scores")
        check("bias_E", bias_E, shape=(e,), dtypes=LOGIT_DTYPES)
    check_device(_route_fwd_kernel, logits_TE, *([] if bias_E is None else [bias_E]))
    e_pad = pow2(e, 2)
    bt = _block_tokens(_route_fwd_kernel, t, e_pad)
    blocks = triton.cdiv(t, bt)
    new = logits_TE.new_empty
    weights_TK, ids_TK, probs_TE = new(t, k), new(t, k, dtype=torch.int64), new(t, e)
    # Per-block partial sums, reduced below in a fixed order (deterministic, no atomics).
    counts_JE, prob_sum_JE, z_sum_J = (
        new(blocks, e_pad, dtype=torch.int32),
        new(blocks, e_pad),
        new(blocks),
    )
    if t:
        _route_fwd_kernel[(blocks,)](
            logits_TE, bias_E, weights_TK, ids_TK, probs_TE, counts_JE, prob_sum_JE, z_sum_J,
            t, e, k, logits_TE.stride(0),
            SIGMOID=score == "sigmoid", HAS_BIAS=bias_E is not None, RENORM=renormalize,
            ACC=acc_dtype(logits_TE.dtype), BT=bt, E_PAD=e_pad, K_PAD=pow2(k, 2),
            N_GROUPS=n_groups, TOPK_GROUPS=topk_groups, GROUP_SIZE=e // n_groups,
            G_PAD=pow2(n_groups, 2),
        )  # fmt: skip
    return TopKRoute(
        weights_TK,
        ids_TK,
        probs_TE,
        counts_JE.sum(0, dtype=torch.int32)[:e],
        prob_sum_JE.sum(0)[:e],
        z_sum_J.sum(),
    )


def topk_route_backward(
    logits_TE: torch.Tensor,
    ids_TK: torch.Tensor,
    dweights_TK: torch.Tensor,
    dprobs_TE: torch.Tensor,
    dprob_sum_E: torch.Tensor,
    dz_sum: torch.Tensor,
    *,
    score: str,
    renormalize: bool,
) -> torch.Tensor:
    """(T, E) gradient of the logits from the gradients of :class:`TopKRoute`'s float outputs."""
    check("ids_TK", ids_TK, shape=(logits_TE.shape[0], None), dtypes=(torch.int32, torch.int64))
    k = ids_TK.shape[1]
    t, e = _check_args(logits_TE, k, score)
    check("dweights_TK", dweights_TK, shape=(t, k), dtypes=LOGIT_DTYPES)
    check("dprobs_TE", dprobs_TE, shape=(t, e), dtypes=LOGIT_DTYPES)
    check("dprob_sum_E", dprob_sum_E, shape=(e,), dtypes=LOGIT_DTYPES)
    check("dz_sum", dz_sum, shape=(), dtypes=LOGIT_DTYPES)
    tensors = (logits_TE, ids_TK, dweights_TK, dprobs_TE, dprob_sum_E, dz_sum)
    check_device(_route_bwd_kernel, *tensors)
    dlogits_TE = logits_TE.new_empty(t, e)
    e_pad = pow2(e, 2)
    bt = _block_tokens(_route_bwd_kernel, t, e_pad)
    if t:
        _route_bwd_kernel[(triton.cdiv(t, bt),)](
            logits_TE, ids_TK.contiguous(), dweights_TK.contiguous(), dprobs_TE.contiguous(),
            dprob_sum_E.contiguous(), dz_sum, dlogits_TE, t, e, k, logits_TE.stride(0),
            SIGMOID=score == "sigmoid", RENORM=renormalize, ACC=acc_dtype(logits_TE.dtype),
            BT=bt, E_PAD=e_pad,
        )  # fmt: skip
    return dlogits_TE
