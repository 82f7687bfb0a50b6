"""Expert-grouped row assignment: histogram + prefix sum of expert ids (the Triton dispatch).

For the flat assignments ``n = t·K + k`` of ``ids_TK`` (id -1 = empty slot), the rows of the
expert-grouped buffer are ordered by expert and, within an expert, by ``n`` (token order, as a
stable sort would give); ids outside ``[0, E)`` count as empty. Capacity drops happen before
dispatch (``pipeline.model.moe``), as empty slots.

Two launches, no host synchronisation: ``_histogram_kernel`` counts each block's assignments per
expert; ``_assign_rows_kernel`` then reads the whole (blocks × experts) count table, so every
block derives its own prefix sums (earlier blocks, earlier experts) without a separate scan
launch, ranks its assignments within their expert by a cumulative sum over one-hot columns, and
writes ``row_TK`` and the inverse map ``tok_S`` (the token of each row).

Shapes (``docs/ARCHITECTURE.md``): T tokens, K slots, E experts, S = T·K grouped rows (an
upper bound), J program blocks; ``TK`` is the flat assignment index ``t·K + k``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from pipeline.kernels.launch import INDEX_DTYPES, check, check_device, interpreting, pow2


@triton.jit
def _histogram_kernel(ids_ptr, counts_ptr, NUM_SLOTS, BLOCK: tl.constexpr, E_PAD: tl.constexpr):
    block = tl.program_id(0)
    n = block * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + n, mask=n < NUM_SLOTS, other=-1)
    experts = tl.arange(0, E_PAD)
    onehot = (ids[:, None] == experts[None, :]).to(tl.int32)
    tl.store(counts_ptr + block * E_PAD + experts, tl.sum(onehot, axis=0))


@triton.jit
def _assign_rows_kernel(
    ids_ptr, counts_ptr, row_ptr, tok_ptr, offs_ptr, NUM_SLOTS, E, K, NUM_BLOCKS,
    BLOCK: tl.constexpr, E_PAD: tl.constexpr, J_PAD: tl.constexpr,
):  # fmt: skip
    block = tl.program_id(0)
    blocks = tl.arange(0, J_PAD)
    experts = tl.arange(0, E_PAD)
    counts_JE = tl.load(
        counts_ptr + blocks[:, None] * E_PAD + experts[None, :],
        mask=blocks[:, None] < NUM_BLOCKS,
        other=0,
    )
    total_E = tl.sum(counts_JE, axis=0)
    earlier_E = tl.sum(tl.where(blocks[:, None] < block, counts_JE, 0), axis=0)
    end_E = tl.cumsum(total_E, axis=0)
    start_E = end_E - total_E
    if block == 0:
        tl.store(offs_ptr + experts, end_E.to(tl.int32), mask=experts < E)

    n = block * BLOCK + tl.arange(0, BLOCK)
    ids = tl.load(ids_ptr + n, mask=n < NUM_SLOTS, other=-1)
    onehot = (ids[:, None] == experts[None, :]).to(tl.int32)
    rank_in_block = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1
    rank = rank_in_block + tl.sum(onehot * earlier_E[None, :], axis=1)
    keep = (ids >= 0) & (ids < E)
    row = tl.where(keep, tl.sum(onehot * start_E[None, :], axis=1) + rank, -1)
    tl.store(row_ptr + n, row, mask=n < NUM_SLOTS)
    tl.store(tok_ptr + row, n // K, mask=(n < NUM_SLOTS) & keep)


@dataclass(frozen=True)
class RowAssignment:
    """Where each assignment goes in the expert-grouped buffer (all int32, on the ids' device).

    ``row_TK``: row of each (token, slot), -1 for empty slots. ``tok_S``: the token of each row,
    -1 past the last assigned row. ``offs_E``: cumulative end row of each expert's group.
    """

    row_TK: torch.Tensor
    tok_S: torch.Tensor
    offs_E: torch.Tensor


def assign_rows(ids_TK: torch.Tensor, num_experts: int) -> RowAssignment:
    """Group the assignments of ``ids_TK`` by expert."""
    check("ids_TK", ids_TK, shape=(None, None), dtypes=INDEX_DTYPES)
    check_device(_histogram_kernel, ids_TK)
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    t, k = ids_TK.shape
    n = t * k
    block = pow2(n, 16) if interpreting(_histogram_kernel) else 512
    block = min(block, 4096)
    num_blocks = triton.cdiv(n, block)
    e_pad = pow2(num_experts, 2)
    ids = ids_TK.contiguous().view(-1)
    dev = ids.device
    counts_JE = torch.empty(max(num_blocks, 1), e_pad, dtype=torch.int32, device=dev)
    out = RowAssignment(
        row_TK=torch.empty(t, k, dtype=torch.int32, device=dev),
        tok_S=torch.full((n,), -1, dtype=torch.int32, device=dev),
        offs_E=torch.zeros(num_experts, dtype=torch.int32, device=dev),
    )
    if n == 0:
        return out
    _histogram_kernel[(num_blocks,)](ids, counts_JE, n, BLOCK=block, E_PAD=e_pad)
    _assign_rows_kernel[(num_blocks,)](
        ids, counts_JE, out.row_TK, out.tok_S, out.offs_E, n, num_experts, k, num_blocks,
        BLOCK=block, E_PAD=e_pad, J_PAD=pow2(num_blocks, 2),
    )  # fmt: skip
    return out
