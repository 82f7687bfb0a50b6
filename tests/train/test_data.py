"""Token windows over sharded splits and the resumable sampler: order, state, DDP slicing,
the same windows whatever the sharding, clear errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from pipeline.data.shards import open_split, write_split
from pipeline.train.data import (
    TokenDataModule,
    TokenWindows,
    TrainDataError,
    ValidationWindows,
    WindowStream,
    training_vocab_size,
)


def take(stream: WindowStream, n: int) -> list[list[int]]:
    return list(itertools.islice(iter(stream), n))


def write(directory, *shards: list[int], vocab: int = 100, tokenizer: str = "t"):
    """A split of one document per shard (the writer appends the end-of-text token, 0)."""
    options = {"dtype": "uint16", "vocab_size": vocab, "eot_id": 0, "tokenizer_sha256": tokenizer}
    write_split(directory, directory.name, [[s[:-1]] for s in shards], **options)
    return open_split(directory)


def test_windows_shift_targets_by_one_and_share_only_the_boundary_token(tmp_path):
    split = write(tmp_path / "t", [*range(1, 10), 0])  # 1..9, then EOT = 0: 10 tokens
    windows = TokenWindows(split, seq_len=3)
    assert len(windows) == 3  # (10 - 1) // 3
    x0, y0 = windows[0]
    x1, _ = windows[1]
    assert x0.tolist() == [1, 2, 3] and y0.tolist() == [2, 3, 4]
    assert x1.tolist() == [4, 5, 6] and x0.dtype == torch.int64


def test_windows_span_shards_and_equal_those_of_one_file(tmp_path):
    rng = np.random.default_rng(0)
    docs = [[*rng.integers(1, 100, size=int(rng.integers(3, 40))).tolist(), 0] for _ in range(30)]
    flat = [t for d in docs for t in d]
    one = TokenWindows(write(tmp_path / "one", flat), seq_len=16)
    sharded = TokenWindows(write(tmp_path / "many", *docs), seq_len=16)
    assert len(sharded.split.shards) == 30 and len(one) == len(sharded) == (len(flat) - 1) // 16
    for i in range(len(one)):
        x, y = sharded[i]
        assert (
            x.tolist() == flat[i * 16 : i * 16 + 16]
            and y.tolist() == flat[i * 16 + 1 : i * 16 + 17]
        )
        assert torch.equal(one[i][0], x) and torch.equal(one[i][1], y)


def test_resumed_stream_over_a_sharded_split_gives_the_uninterrupted_batches(tmp_path):
    rng = np.random.default_rng(1)
    docs = [[*rng.integers(1, 100, size=50).tolist(), 0] for _ in range(12)]
    windows = TokenWindows(write(tmp_path / "s", *docs), seq_len=8)
    straight = WindowStream(len(windows), 4, rank=0, world_size=1, seed=2)
    expected = [[windows[i][0].tolist() for i in batch] for batch in take(straight, 40)]
    first = WindowStream(len(windows), 4, rank=0, world_size=1, seed=2)
    first.mark_consumed(23)
    resumed = WindowStream(len(windows), 4, rank=0, world_size=1, seed=2)
    resumed.load_state_dict(first.state_dict())
    rest = [[windows[i][0].tolist() for i in batch] for batch in take(resumed, 17)]
    assert rest == expected[23:]


def test_corpus_smaller_than_one_window_is_a_clear_error(tmp_path):
    split = write(tmp_path / "small", [5, 6, 7, 0])
    with pytest.raises(TrainDataError, match=r"corpus smaller than one training window") as info:
        TokenWindows(split, seq_len=4)
    message = str(info.value)
    assert "small" in message and "4 tokens" in message and "seq_len + 1 = 5" in message


def test_order_is_deterministic_a_permutation_per_epoch_and_seed_dependent():
    first = take(WindowStream(10, 5, rank=0, world_size=1, seed=3), 4)  # two epochs
    again = take(WindowStream(10, 5, rank=0, world_size=1, seed=3), 4)
    other = take(WindowStream(10, 5, rank=0, world_size=1, seed=4), 4)
    assert first == again and first != other
    epoch0, epoch1 = first[0] + first[1], first[2] + first[3]
    assert sorted(epoch0) == sorted(epoch1) == list(range(10))
    assert epoch0 != epoch1  # a fresh permutation each epoch


def test_micro_batches_cross_epoch_boundaries_without_dropping_windows():
    stream = WindowStream(7, 3, rank=0, world_size=1, seed=0)
    flat = [i for batch in take(stream, 7) for i in batch]  # 21 items = exactly 3 epochs
    assert [sorted(flat[e * 7 : (e + 1) * 7]) for e in range(3)] == [list(range(7))] * 3


def test_restored_state_mid_epoch_yields_the_same_remaining_batches():
    original = WindowStream(50, 4, rank=0, world_size=1, seed=9)
    expected = take(original, 30)  # 120 items: crosses into epoch 2
    trained = WindowStream(50, 4, rank=0, world_size=1, seed=9)
    trained.mark_consumed(17)
    state = trained.state_dict()
    assert state["epoch"] == 1 and state["position"] == 17 * 4 - 50  # mid-epoch
    resumed = WindowStream(50, 4, rank=0, world_size=1, seed=9)
    resumed.load_state_dict(state)
    assert take(resumed, 13) == expected[17:]


def test_iterating_ahead_does_not_move_the_saved_position():
    """The loader prefetches: only batches marked consumed count."""
    stream = WindowStream(50, 4, rank=0, world_size=1, seed=9)
    take(stream, 5)
    stream.mark_consumed(2)
    assert stream.state_dict()["position"] == 8


def test_ddp_ranks_take_disjoint_slices_of_the_same_global_batch():
    single = take(WindowStream(40, 6, rank=0, world_size=1, seed=1), 5)
    ranks = [take(WindowStream(40, 2, rank=r, world_size=3, seed=1), 5) for r in range(3)]
    for step in range(5):
        slices = [ranks[r][step] for r in range(3)]
        assert set(slices[0]).isdisjoint(slices[1]) and set(slices[1]).isdisjoint(slices[2])
        assert slices[0] + slices[1] + slices[2] == single[step]


def test_state_from_other_data_or_seed_is_refused():
    state = WindowStream(50, 4, rank=0, world_size=1, seed=9).state_dict()
    with pytest.raises(TrainDataError, match="num_windows: checkpoint 50, now 60"):
        WindowStream(60, 4, rank=0, world_size=1, seed=9).load_state_dict(state)
    with pytest.raises(TrainDataError, match="seed: checkpoint 9, now 8"):
        WindowStream(50, 4, rank=0, world_size=1, seed=8).load_state_dict(state)


def test_position_that_does_not_fit_the_global_batch_is_refused():
    stream = WindowStream(50, 4, rank=0, world_size=1, seed=9)
    stream.load_state_dict({"epoch": 0, "position": 6, "num_windows": 50, "seed": 9})
    with pytest.raises(TrainDataError, match="not a multiple of the global micro-batch 4"):
        next(iter(stream))


def test_validation_uses_the_first_windows_in_order_split_over_ranks(tiny, corpus):
    full = TokenWindows(open_split(corpus.token_split("validation")), seq_len=32)
    ranks = [ValidationWindows(full, count=6, rank=r, world_size=2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 3
    interleaved = [ranks[i % 2][i // 2][0] for i in range(6)]
    assert all(torch.equal(got, full[i][0]) for i, got in enumerate(interleaved))


def test_validation_set_is_capped_by_the_split(tiny, corpus):
    full = TokenWindows(open_split(corpus.token_split("validation")), seq_len=32)
    assert len(ValidationWindows(full, count=10**6, rank=0, world_size=1)) == len(full)


@pytest.mark.parametrize(("vocab", "tokenizer"), [(50, ""), (300, "another tokenizer")])
def test_validation_split_from_another_tokenizer_is_refused_before_training(
    tiny, corpus, vocab, tokenizer
):
    tokens = (np.arange(1, 200, dtype=np.int64) % 49 + 1).tolist()
    write(corpus.token_split("validation"), tokens, vocab=vocab, tokenizer=tokenizer)
    train, val = corpus.token_split("train"), corpus.token_split("validation")
    with pytest.raises(TrainDataError, match="was not encoded with the tokenizer"):
        training_vocab_size(train, val)  # what the trainer calls before building the model
    dm = TokenDataModule(train, val, tiny.params().train, 0)
    with pytest.raises(TrainDataError, match="was not encoded with the tokenizer"):
        dm.setup("fit")
