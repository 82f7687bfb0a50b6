"""Training data: fixed-length windows over a split's memory-mapped token shards, in a
resumable order.

Window ``i`` of a split is ``tokens[i*L : i*L + L + 1]`` (``L = seq_len``) of the split's
concatenated token stream (:class:`~pipeline.data.shards.TokenStream`: the shards in manifest
order), so a window may span two shards and the windows do not depend on how the split is
sharded. Inputs are its first ``L`` tokens, targets the last ``L``. Consecutive windows share
only that one boundary token, so inputs never overlap and every token after the first is a
target exactly once per epoch.

The training order is an endless stream: epoch ``e`` is a permutation of all windows drawn from
``(seed, e)``, and the epochs are concatenated. Global micro-batch ``g`` is stream items
``[g*G, (g+1)*G)`` with ``G = micro_batch_size * world_size``; data-parallel rank ``r`` takes
items ``[g*G + r*B, g*G + (r+1)*B)``. The only state is how many stream items the trainer has
consumed (saved as epoch + position): a resumed run continues with exactly the batches an
uninterrupted run would have seen, mid-epoch too, and the position does not depend on the world
size. Being endless, the stream has no epoch end for Lightning to handle; training length is
``max_steps`` alone, and an epoch boundary can fall inside a micro-batch without dropping windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from pipeline.config import TrainConfig
from pipeline.data.shards import ShardError, SplitManifest, TokenSplit, open_split, read_manifest
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


class TrainDataError(PipelineError, ValueError):
    """The token files cannot feed this training configuration."""


class TokenWindows(Dataset):
    """Map-style dataset: item ``i`` is ``(inputs, targets)``, two int64 tensors of ``seq_len``."""

    def __init__(self, split: TokenSplit, seq_len: int):
        self.split = split
        self.seq_len = seq_len
        self.tokens = split.tokens
        if split.num_tokens < seq_len + 1:
            raise TrainDataError(
                f"{split.directory}: corpus smaller than one training window: it holds "
                f"{split.num_tokens} tokens, a window needs seq_len + 1 = {seq_len + 1}"
            )
        self.num_windows = (split.num_tokens - 1) // seq_len

    def __len__(self) -> int:
        return self.num_windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = index * self.seq_len
        window = torch.from_numpy(self.tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]


class WindowStream(Sampler[list[int]]):
    """Endless batch sampler: this rank's slice of each global micro-batch of window indices.

    Iterating does not advance the state: the trainer reports each micro-batch it actually
    trains on through :meth:`mark_consumed` (see :class:`~pipeline.train.callbacks.SamplerProgress`),
    because the data loader fetches ahead of training and a checkpoint must record what was
    trained on, not what was prefetched.
    """

    def __init__(
        self, num_windows: int, micro_batch_size: int, rank: int, world_size: int, seed: int
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_windows = num_windows
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.consumed = 0  # stream items (windows) consumed by all ranks together
        self._perms: dict[int, np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.micro_batch_size * self.world_size

    def permutation(self, epoch: int) -> np.ndarray:
        """Epoch ``epoch``'s order. Seeded by ``(seed, epoch)`` rather than ``seed + epoch`` so
        that runs with neighbouring seeds do not share epochs."""
        if epoch not in self._perms:
            # Two epochs at most are live: the current one and the next across a boundary.
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            rng = np.random.default_rng([self.seed, epoch])
            self._perms[epoch] = rng.permutation(self.num_windows)
        return self._perms[epoch]

    def items(self, start: int, count: int) -> list[int]:
        """Window indices of stream items ``[start, start + count)``, across epoch boundaries."""
        out: list[int] = []
        while count > 0:
            epoch, pos = divmod(start, self.num_windows)
            take = min(count, self.num_windows - pos)
            out.extend(self.permutation(epoch)[pos : pos + take].tolist())
            start += take
            count -= take
        return out

    def micro_batch(self, index: int) -> list[int]:
        """This rank's window indices for global micro-batch ``index`` of the stream."""
        return self.items(
            index * self.global_batch + self.rank * self.micro_batch_size, self.micro_batch_size
        )

    def __iter__(self) -> Iterator[list[int]]:
        if self.consumed % self.global_batch:
            raise TrainDataError(
                f"sampler position {self.consumed} is not a multiple of the global micro-batch "
                f"{self.global_batch} (micro_batch_size x devices x num_nodes): resume with the "
                "batch geometry the checkpoint was written with"
            )
        index = self.consumed // self.global_batch
        while True:
            yield self.micro_batch(index)
            index += 1

    def mark_consumed(self, micro_batches: int = 1) -> None:
        self.consumed += micro_batches * self.global_batch

    def state_dict(self) -> dict[str, int]:
        epoch, position = divmod(self.consumed, self.num_windows)
        return {
            "epoch": epoch,
            "position": position,
            "num_windows": self.num_windows,
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore the position; refuse a state from other data or another seed, whose epoch
        and position would point at different windows."""
        mismatched = {
            key: (state[key], mine)
            for key, mine in (("num_windows", self.num_windows), ("seed", self.seed))
            if state[key] != mine
        }
        if mismatched:
            detail = ", ".join(f"{k}: checkpoint {a}, now {b}" for k, (a, b) in mismatched.items())
            raise TrainDataError(
                f"the checkpoint's data order does not match this run ({detail}): the training "
                "data, seq_len or seed changed since it was written"
            )
        self.consumed = state["epoch"] * self.num_windows + state["position"]


class ValidationWindows(Dataset):
    """The first ``count`` windows of a split, in order; this rank keeps every
    ``world_size``-th one, so together the ranks cover the set once whatever their number."""

    def __init__(self, windows: TokenWindows, count: int, rank: int, world_size: int):
        self.windows = windows
        self.indices = range(rank, min(count, len(windows)), world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.windows[self.indices[i]]


class TokenDataModule(L.LightningDataModule):
    """Train stream and validation windows over two token splits (their directories).

    Validation uses the first ``monitor.val_batches`` global micro-batches of windows of the validation
    split (``val_batches * micro_batch_size * world_size`` windows, fewer if the split is
    smaller): each rank runs ``val_batches`` batches, and two runs with the same global batch
    validate on the same windows whatever their parallel layout.
    The sampler position travels in the checkpoint through :meth:`state_dict`.
    """

    def __init__(self, train_dir: Path, val_dir: Path, cfg: TrainConfig, seed: int):
        super().__init__()
        self.train_dir = Path(train_dir)
        self.val_dir = Path(val_dir)
        self.cfg = cfg
        self.seed = seed
        self.train_set: TokenWindows | None = None
        self.val_set: ValidationWindows | None = None
        self.sampler: WindowStream | None = None

    def setup(self, stage: str) -> None:
        rank, world = self._rank_and_world()
        if self.train_set is None:
            self.train_set = TokenWindows(open_split(self.train_dir), self.cfg.seq_len)
            self.sampler = WindowStream(
                len(self.train_set), self.cfg.micro_batch_size, rank, world, self.seed
            )
        if self.val_set is None:
            val = TokenWindows(open_split(self.val_dir), self.cfg.seq_len)
            check_same_tokenizer(self.train_set.split, val.split)
            wanted = self.cfg.monitor.val_batches * self.cfg.micro_batch_size * world
            if len(val) < wanted:
                log.warning(
                    "%s holds %d windows; validating on all of them (train.monitor.val_batches asks for %d)",
                    self.val_dir,
                    len(val),
                    wanted,
                )
            self.val_set = ValidationWindows(val, wanted, rank, world)

    def _rank_and_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DataLoader:
        # Workers would buy nothing: a window is one memmap slice, and the stream is endless.
        return DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.cfg.micro_batch_size, shuffle=False)

    def state_dict(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state_dict()} if self.sampler else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.sampler is None:
            raise RuntimeError("TokenDataModule.load_state_dict before setup(): no sampler yet")
        self.sampler.load_state_dict(state_dict["sampler"])


def check_same_tokenizer(train: SplitManifest, other: SplitManifest) -> None:
    """Splits encoded by different tokenizers would validate on meaningless ids."""
    try:
        train.check_same_tokenizer(other)
    except ShardError as exc:
        raise TrainDataError(str(exc)) from None


def training_vocab_size(train_dir: Path, val_dir: Path) -> int:
    """The vocabulary the model is built for, once the two splits' manifests are known to come
    from one tokenizer: checked before any training work (the shards' digests are checked when
    the data module opens them)."""
    train = read_manifest(train_dir)
    check_same_tokenizer(train, read_manifest(val_dir))
    return train.vocab_size
