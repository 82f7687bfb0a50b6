"""A tiny, fast training set-up shared by the training tests, the DDP worker and make_golden.

Imported by path (tests/train/conftest.py, or as the script's own directory), because the
tests directory is not an installed package.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Params, parse_params
from pipeline.data.shards import write_split
from pipeline.paths import Paths
from pipeline.train.trainer import TrainResult, train

VOCAB = 300
EOT = 0
TINY: dict[str, Any] = {
    "seed": 5,
    "train": {
        "model": {
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "dense_hidden": 64,
            "max_seq_len": 32,
            "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
        },
        "optim": {"lr": 1e-2, "warmup_steps": 3},
        "seq_len": 32,
        "micro_batch_size": 4,
        "max_steps": 8,
        "runtime": {"precision": "32-true", "accelerator": "cpu", "checkpoint_every": 4},
        "monitor": {
            "log_every": 2,
            "val_every": 4,
            "val_batches": 2,
            "peak_flops": 1e11,  # skip the matmul timing in tests
        },
    },
}

# The golden loss curve's run (tests/assets/golden_loss_tiny.json, tests/train/make_golden.py).
GOLDEN: dict[str, Any] = {
    "max_steps": 20,
    "runtime": {"checkpoint_every": 20, "resume": "never"},
    "monitor": {"log_every": 5, "val_every": 10},
}


def merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def params(**train: Any) -> Params:
    """The tiny params with ``train`` keys overridden (nested dicts merge)."""
    return parse_params(merge(TINY, {"train": train}))


def write_tokens(root: Path, train_tokens: int = 12_000, val_tokens: int = 1_500) -> Paths:
    """Learnable random documents: counting runs with a random start and stride, so the loss
    falls well below log(VOCAB) within a few steps and a broken optimizer shows. The train
    split is cut into three shards: training windows cross shard boundaries (the golden loss
    curve was recorded on one file of the same tokens)."""
    paths = Paths(root=root)
    rng = np.random.default_rng(0)
    for split, total in (("train", train_tokens), ("validation", val_tokens)):
        docs = []
        while sum(len(d) + 1 for d in docs) < total:
            start, stride = int(rng.integers(1, VOCAB)), int(rng.integers(1, 4))
            length = int(rng.integers(20, 60))
            docs.append([1 + (start + stride * i) % (VOCAB - 1) for i in range(length)])
        cuts = (
            [0, len(docs) // 3, 2 * len(docs) // 3, len(docs)]
            if split == "train"
            else [0, len(docs)]
        )
        shards = [docs[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
        write_split(
            paths.token_split(split), split, shards, dtype="uint16", vocab_size=VOCAB, eot_id=EOT
        )
    return paths


RUN_KEY = "tiny"  # the checkpoint directory of these runs (the stage uses the run fingerprint)


def run(paths: Paths, p: Params, callbacks: Sequence = ()) -> TrainResult:
    return train(p, paths, RUN_KEY, progress_bar=False, extra_callbacks=callbacks)


def losses(result: TrainResult) -> list[float]:
    return [row["loss"] for row in result.history["train"]]
