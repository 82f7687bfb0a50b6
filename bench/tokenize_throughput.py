"""Tokenize stage encoding against bare ``tokenizers`` ``encode_batch_fast``, like for like.

    python bench/tokenize_throughput.py [--split data/prepared/train] [--threads 1] [--reps 5]

Both sides encode the same texts in the same batches (``tokenize.batch_size``) with the same
tokenizer threads (``RAYON_NUM_THREADS = --threads``, set before the first encode):

* bare: ``encode_batch_fast`` over the texts, already in memory, taking each document's ids;
* stage: :func:`pipeline.data.tokenizer.encode_shard` on each Parquet shard of the split, which
  checks the shard's digest, reads it, encodes, converts the ids to the token dtype, and writes
  and hashes the ``.bin``.

Timed in rotation (``timing.rotation``: warm-ups, then each side once per rotation), medians and
minima; stage / bare is the median of the per-rotation ratios. Target: >= 0.9.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", type=Path, default=Path("data/prepared/train"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.json"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--warmups", type=int, default=2)
    args = parser.parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before tokenizers starts its pool

    import tokenizers
    from timing import ratio, rotation
    from tokenizers import Tokenizer

    from pipeline.config import TokenizeConfig
    from pipeline.data.prepared import iter_texts, read_prepared
    from pipeline.data.tokenizer import encode_shard

    cfg = TokenizeConfig()
    tokenizer = Tokenizer.from_file(str(args.tokenizer))
    split = read_prepared(args.split)
    batches = list(iter_texts(split, cfg.batch_size))
    mb = split.bytes / 1e6

    def bare() -> int:
        tokens = 0
        for texts in batches:
            for enc in tokenizer.encode_batch_fast(texts, add_special_tokens=False):
                tokens += len(enc.ids)
        return tokens

    with tempfile.TemporaryDirectory() as tmp:

        def stage() -> None:
            for index, shard in enumerate(split.shards):
                encode_shard(tokenizer, shard, Path(tmp) / f"{index}.bin", cfg)

        times = rotation({"bare": bare, "stage": stage}, args.reps, args.warmups)
    median, low = ratio(times["bare"], times["stage"])  # bare s / stage s = stage / bare MB/s
    print(
        f"split {args.split} ({mb:.1f} MB, {split.documents} documents, {len(split.shards)} "
        f"shards), tokenizers {tokenizers.__version__}, {args.threads} thread(s), "
        f"{platform.machine()}, {args.warmups} warm-ups + {args.reps} rotations"
    )
    print(f"| {'path':<44} | {'median s':>8} | {'min s':>6} | {'MB/s':>6} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 8}|{'-' * 8}|")
    for name, label in (
        ("bare", "bare encode_batch_fast (texts in memory)"),
        ("stage", "stage encode_shard (parquet -> .bin)"),
    ):
        med = statistics.median(times[name])
        print(f"| {label:<44} | {med:8.2f} | {min(times[name]):6.2f} | {mb / med:6.2f} |")
    print(f"stage / bare throughput: {median:.3f} (lower quartile {low:.3f}; target >= 0.9)")


if __name__ == "__main__":
    main()
