"""Tokenize stage encode throughput vs a bare ``encode_batch`` loop over the same corpus.

    python bench/tokenize_throughput.py [--parquet data/prepared/train.parquet] [--reps 5]

The bare loops have every text in memory already and keep nothing; the stage reads Parquet,
encodes, converts to uint16 and writes + hashes the token file. Target: stage >= 80 % of the
bare ``encode_batch`` loop. The stage calls ``encode_batch_fast`` (no character offsets), so the
bare ``encode_batch_fast`` loop is shown too: it is the honest ceiling for the stage.
Both are timed in the same process, alternating, median of ``--reps`` repetitions.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import tokenizers
from tokenizers import Tokenizer

from pipeline.config import TokenizeConfig
from pipeline.data.tokenizer import encode_split, train_tokenizer


def bare_loop(encode, texts: list[str], batch_size: int) -> int:
    tokens = 0
    for i in range(0, len(texts), batch_size):
        for enc in encode(texts[i : i + batch_size], add_special_tokens=False):
            tokens += len(enc.ids)
    return tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parquet", type=Path, default=Path("data/prepared/train.parquet"))
    parser.add_argument("--tokenizer", type=Path, default=Path("data/tokenizer/tokenizer.json"))
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    cfg = TokenizeConfig()
    if args.tokenizer.exists():
        tokenizer = Tokenizer.from_file(str(args.tokenizer))
    else:
        tokenizer = train_tokenizer(args.parquet, cfg)
    texts = pq.read_table(args.parquet).column("text").to_pylist()
    mb = sum(len(t.encode()) for t in texts) / 1e6

    runs: dict[str, list[float]] = {"bare": [], "fast": [], "stage": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.reps):
            for name, work in (
                ("bare", lambda: bare_loop(tokenizer.encode_batch, texts, cfg.batch_size)),
                ("fast", lambda: bare_loop(tokenizer.encode_batch_fast, texts, cfg.batch_size)),
                (
                    "stage",
                    lambda t=tmp: encode_split(tokenizer, args.parquet, Path(t) / "x.bin", cfg),
                ),
            ):
                start = time.perf_counter()
                work()
                runs[name].append(time.perf_counter() - start)

    bare, fast, stage = (statistics.median(runs[k]) for k in ("bare", "fast", "stage"))
    print(
        f"corpus {args.parquet} ({mb:.1f} MB), tokenizers {tokenizers.__version__}, "
        f"{platform.processor() or platform.machine()}, median of {args.reps}"
    )
    print(f"| {'path':<36} | {'s':>6} | {'MB/s':>6} |")
    print(f"|{'-' * 38}|{'-' * 8}|{'-' * 8}|")
    print(f"| {'bare encode_batch loop (in memory)':<36} | {bare:6.2f} | {mb / bare:6.2f} |")
    print(f"| {'bare encode_batch_fast loop':<36} | {fast:6.2f} | {mb / fast:6.2f} |")
    print(f"| {'stage encode_split (parquet → .bin)':<36} | {stage:6.2f} | {mb / stage:6.2f} |")
    print(f"stage / bare encode_batch: {bare / stage:.2f} (target >= 0.80)")
    print(f"stage / bare encode_batch_fast: {fast / stage:.2f}")


if __name__ == "__main__":
    main()
