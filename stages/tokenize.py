"""DVC stage ``tokenize``: train byte-level BPE on the train split, encode every split.

``python -m stages.tokenize`` writes ``data/tokenizer/`` (``tokenizer.json`` + the files
``transformers.AutoTokenizer`` reads), ``data/tokens/<split>.bin|.json`` and
``metrics/tokenize.json``.
"""

from __future__ import annotations

import logging
import time

from tokenizers import Tokenizer

from pipeline.config import Params, load_params
from pipeline.data.tokenizer import encode_split, save_tokenizer, train_tokenizer
from pipeline.io import sha256_file, write_json
from pipeline.paths import SPLITS, Paths
from pipeline.tracking import stage_run
from stages.common import run_main

log = logging.getLogger("stages.tokenize")


def run(params: Params, paths: Paths) -> dict:
    """Train the tokenizer, encode the splits, return ``metrics/tokenize.json``'s content."""
    cfg = params.tokenize
    start = time.perf_counter()
    tokenizer = train_tokenizer(paths.parquet("train"), cfg)
    save_tokenizer(tokenizer, cfg, paths.tokenizer_dir)
    train_s = time.perf_counter() - start
    log.info("trained BPE: vocab %d in %.1f s", tokenizer.get_vocab_size(), train_s)
    # Encode with the tokenizer as saved, so the shards match what evaluation will load.
    tokenizer = Tokenizer.from_file(str(paths.tokenizer_file))
    metrics: dict = {"vocab_size": tokenizer.get_vocab_size(), "train_tokenizer_s": train_s}
    total_bytes = total_tokens = 0
    encode_start = time.perf_counter()
    for split in SPLITS:
        header, text_bytes = encode_split(tokenizer, paths.parquet(split), paths.tokens(split), cfg)
        metrics[split] = {
            "tokens": header.num_tokens,
            "documents": header.num_documents,
            "bytes": text_bytes,
            "bytes_per_token": text_bytes / max(header.num_tokens, 1),
        }
        total_bytes += text_bytes
        total_tokens += header.num_tokens
    encode_s = time.perf_counter() - encode_start
    metrics["encode_s"] = encode_s
    metrics["encode_mb_per_s"] = total_bytes / 1e6 / encode_s
    metrics["encode_tokens_per_s"] = total_tokens / encode_s
    write_json(paths.tokenize_metrics, metrics)
    log.info(
        "encoded %d tokens (%.1f MB) in %.1f s: %.2f MB/s",
        total_tokens,
        total_bytes / 1e6,
        encode_s,
        metrics["encode_mb_per_s"],
    )
    return metrics


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = {split: sha256_file(paths.parquet(split)) for split in SPLITS}
    upstream = {"prepare": paths.prepare_run}
    with stage_run("tokenize", params, inputs, upstream, paths.tokenize_run) as tracked:
        metrics = run(params, paths)
        tracked.log_metrics(
            {
                "vocab_size": metrics["vocab_size"],
                "encode_mb_per_s": metrics["encode_mb_per_s"],
                **{f"{s}_tokens": metrics[s]["tokens"] for s in SPLITS},
                **{f"{s}_bytes_per_token": metrics[s]["bytes_per_token"] for s in SPLITS},
            }
        )
        tracked.log_artifact(paths.tokenizer_file, "tokenizer")
        tracked.log_artifact(paths.tokenize_metrics)


if __name__ == "__main__":
    run_main("tokenize", main)
