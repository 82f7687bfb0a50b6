"""DVC stage ``tokenize``: train byte-level BPE on the train split, encode every shard.

``python -m stages.tokenize`` writes ``data/tokenizer/`` (``tokenizer.json`` + the files
``transformers.AutoTokenizer`` reads + their digests), ``data/tokens/<split>/<split>-NNNNN.bin``
+ ``manifest.json`` (:mod:`pipeline.data.shards`: one token shard per prepared Parquet shard),
``metrics/tokenize.json`` and, apart since no stage may depend on them, the wall times and
throughput in ``metrics/tokenize_timing.json``. The shards are encoded by ``tokenize.num_workers`` processes.

Across machines (:mod:`pipeline.data.jobs`), in order:

1. ``python -m stages.tokenize --tokenizer``: train the tokenizer into the staging directory
   ``data/tokens/.staging/`` (one job);
2. ``python -m stages.tokenize --shard I/N`` for I = 0..N-1: encode shards ``I, I+N, ...`` of
   the plan (train, validation, test shards in order) into ``data/tokens/.staging/``;
3. ``python -m stages.tokenize --merge``: check every completion marker, move the tokenizer and
   the shards into place with their manifests, write the metrics: the same bytes as the one
   command, which runs these three steps itself.
"""

from __future__ import annotations

import argparse
import functools
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from pipeline.config import Params, load_params
from pipeline.data.digests import verify_digests
from pipeline.data.jobs import (
    JobError,
    fresh_dir,
    missing_tasks,
    parse_shard,
    plan_digest,
    read_result,
    replace_dir,
    run_tasks,
    select,
    threads_per_worker,
    write_marker,
)
from pipeline.data.prepared import DocumentShard, read_prepared
from pipeline.data.shards import TokenShard, read_manifest, shard_name, write_manifest
from pipeline.data.tokenizer import (
    encode_shard,
    save_tokenizer,
    split_manifest,
    train_tokenizer,
    training_texts,
)
from pipeline.io import sha256_file, write_json
from pipeline.paths import SPLITS, Paths
from pipeline.tracking import split_timings, stage_run
from stages.common import run_main

log = logging.getLogger("stages.tokenize")

TIMINGS = ("train_tokenizer_s", "encode_s", "encode_mb_per_s", "encode_tokens_per_s")


@dataclass(frozen=True)
class EncodeTask:
    """Encode prepared shard ``index`` of ``split``."""

    split: str
    index: int
    source: DocumentShard

    @property
    def name(self) -> str:
        return shard_name(self.split, self.index)


def plan(paths: Paths) -> list[EncodeTask]:
    """Every prepared shard, train first (each checked against its digest when encoded)."""
    return [
        EncodeTask(split, index, source)
        for split in SPLITS
        for index, source in enumerate(read_prepared(paths.prepared_split(split)).shards)
    ]


def tokenizer_task(params: Params, paths: Paths) -> dict:
    """What the tokenizer's marker names: the training data and the params."""
    train = read_prepared(paths.prepared_split("train")).sha256
    return {
        "train": train,
        "params": plan_digest(params.tokenize.model_dump(mode="json", exclude={"num_workers"})),
    }


def encode_task(params: Params, task: EncodeTask, tokenizer_sha256: str) -> dict:
    """What a shard's marker names: its input, the tokenizer and the params that shape it."""
    shaping = params.tokenize.model_dump(mode="json", include={"token_dtype", "eot_token"})
    return {
        "shard": task.name,
        "source": task.source.sha256,
        "tokenizer": tokenizer_sha256,
        "params": plan_digest(shaping),
    }


def train(params: Params, paths: Paths) -> None:
    """Step 1: train and save the tokenizer; its marker records the time it took."""
    start = time.perf_counter()
    train_split = read_prepared(paths.prepared_split("train"))
    texts = training_texts(train_split, params.tokenize)
    tokenizer = train_tokenizer(texts, params.tokenize, train_split.documents)
    save_tokenizer(tokenizer, params.tokenize, _staged_tokenizer(paths))
    seconds = time.perf_counter() - start
    log.info("trained BPE: vocab %d in %.1f s", tokenizer.get_vocab_size(), seconds)
    paths.tokenize_staging.mkdir(parents=True, exist_ok=True)
    write_marker(_tokenizer_marker(paths), tokenizer_task(params, paths), {"seconds": seconds})


def encode(params: Params, paths: Paths, task: EncodeTask, tokenizer_sha256: str) -> None:
    """One task: encode one shard into the staging directory, marker last."""
    start = time.perf_counter()
    tokenizer = _load_tokenizer(
        _staged_tokenizer(paths) / paths.tokenizer_file.name, tokenizer_sha256
    )
    shard = encode_shard(
        tokenizer, task.source, paths.tokenize_staging / task.name, params.tokenize
    )
    result = {"shard": shard.to_json(), "seconds": time.perf_counter() - start}
    write_marker(_marker(paths, task), encode_task(params, task, tokenizer_sha256), result)


@functools.cache
def _load_tokenizer(path: Path, sha256: str) -> Tokenizer:
    """The saved tokenizer, checked against its digests, once per process and version."""
    verify_digests(path.parent, "tokenize")
    if sha256_file(path) != sha256:
        raise JobError(f"{path}: changed while the shards were being encoded; start again")
    return Tokenizer.from_file(str(path))


def run_shard(params: Params, paths: Paths, shard: tuple[int, int]) -> int:
    """Step 2: encode this job's shards (``I, I+N, ...``, largest first); returns how many."""
    tasks = sorted(select(plan(paths), shard), key=lambda t: -t.source.bytes)
    workers = params.tokenize.num_workers
    paths.tokenize_staging.mkdir(parents=True, exist_ok=True)
    tokenizer_sha256 = _staged_tokenizer_sha256(paths)
    args = [(params, paths, t, tokenizer_sha256) for t in tasks]
    run_tasks(encode, args, workers, threads_per_worker(workers))
    return len(tasks)


def merge(params: Params, paths: Paths) -> dict:
    """Step 3: check every marker, move the shards into place with their manifests, and return
    ``metrics/tokenize.json``'s content (written here too)."""
    tasks = plan(paths)
    staged = _staged_tokenizer(paths)
    tokenizer_sha256 = _staged_tokenizer_sha256(paths)
    markers = [(_tokenizer_marker(paths), tokenizer_task(params, paths))]
    markers += [(_marker(paths, t), encode_task(params, t, tokenizer_sha256)) for t in tasks]
    missing_tasks(markers, "tokenize")
    tokenizer = _load_tokenizer(staged / paths.tokenizer_file.name, tokenizer_sha256)
    cfg = params.tokenize
    results = {t.name: read_result(*m) for t, m in zip(tasks, markers[1:], strict=True)}
    metrics: dict = {
        "vocab_size": tokenizer.get_vocab_size(),
        "train_tokenizer_s": read_result(*markers[0])["seconds"],
        "num_workers": cfg.num_workers,
    }
    encode_s = total_bytes = total_tokens = 0
    for split in SPLITS:
        out = fresh_dir(paths.tokenize_staging / "out" / split)
        shards = []
        for task in (t for t in tasks if t.split == split):
            (paths.tokenize_staging / task.name).rename(out / task.name)
            shards.append(TokenShard.from_json(results[task.name]["shard"]))
            encode_s += results[task.name]["seconds"]
        template = split_manifest(out, split, shards, tokenizer, cfg, tokenizer_sha256)
        manifest = write_manifest(out, template)
        text_bytes = sum(s.text_bytes for s in shards)
        metrics[split] = {
            "tokens": manifest.num_tokens,
            "documents": manifest.num_documents,
            "shards": len(shards),
            "bytes": text_bytes,
            "bytes_per_token": text_bytes / max(manifest.num_tokens, 1),
        }
        total_bytes += text_bytes
        total_tokens += manifest.num_tokens
    replace_dir(staged, paths.tokenizer_dir)
    for split in SPLITS:
        replace_dir(paths.tokenize_staging / "out" / split, paths.token_split(split))
    shutil.rmtree(paths.tokenize_staging)
    metrics["encode_s"] = encode_s  # summed over the shards: one worker's throughput
    metrics["encode_mb_per_s"] = total_bytes / 1e6 / max(encode_s, 1e-9)
    metrics["encode_tokens_per_s"] = total_tokens / max(encode_s, 1e-9)
    computed, timings = split_timings(metrics, TIMINGS)
    write_json(paths.tokenize_metrics, computed)  # the card depends on it: no timings
    write_json(paths.tokenize_timing, timings)
    log.info(
        "encoded %d tokens (%.1f MB): %.2f MB/s per worker",
        total_tokens,
        total_bytes / 1e6,
        metrics["encode_mb_per_s"],
    )
    return metrics


def run(params: Params, paths: Paths) -> dict:
    """Train the tokenizer, encode every shard, merge; return the metrics."""
    fresh_dir(paths.tokenize_staging)
    try:
        train(params, paths)
        start = time.perf_counter()
        run_shard(params, paths, (0, 1))
    except BaseException:
        shutil.rmtree(paths.tokenize_staging, ignore_errors=True)
        raise
    wall = time.perf_counter() - start
    metrics = merge(params, paths)
    log.info("encoding took %.1f s with %d workers", wall, params.tokenize.num_workers)
    return metrics


def _staged_tokenizer(paths: Paths) -> Path:
    """Where step 1 saves the tokenizer; the merge moves it to ``data/tokenizer``."""
    return paths.tokenize_staging / "tokenizer"


def _staged_tokenizer_sha256(paths: Paths) -> str:
    path = _staged_tokenizer(paths) / paths.tokenizer_file.name
    if not path.is_file():
        raise JobError(
            f"{path}: not found: train the tokenizer first (python -m stages.tokenize "
            "--tokenizer), then run the shard jobs and the merge"
        )
    return sha256_file(path)


def _tokenizer_marker(paths: Paths) -> Path:
    return paths.tokenize_staging / "tokenizer.done.json"


def _marker(paths: Paths, task: EncodeTask) -> Path:
    return paths.tokenize_staging / f"{task.name}.done.json"


def main() -> None:
    parser = argparse.ArgumentParser(description="DVC stage tokenize (module docstring)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--tokenizer", action="store_true", help="step 1: train the tokenizer")
    group.add_argument("--shard", metavar="I/N", help="step 2: encode shards I, I+N, ...")
    group.add_argument("--merge", action="store_true", help="step 3: merge the shard jobs")
    args = parser.parse_args()
    params = load_params()
    paths = Paths()
    if args.tokenizer:
        fresh_dir(paths.tokenize_staging)
        train(params, paths)
        return
    if args.shard:
        done = run_shard(params, paths, parse_shard(args.shard))
        log.info("job %s: encoded %d shards into %s", args.shard, done, paths.tokenize_staging)
        return
    inputs = {s: read_prepared(paths.prepared_split(s)).sha256 for s in SPLITS}
    upstream = {"prepare": SPLITS}
    with stage_run("tokenize", params, inputs, upstream, paths.tokenize_run) as tracked:
        metrics = merge(params, paths) if args.merge else run(params, paths)
        tracked.log_metrics(
            {
                "vocab_size": metrics["vocab_size"],
                "encode_mb_per_s": metrics["encode_mb_per_s"],
                **{f"{s}_tokens": metrics[s]["tokens"] for s in SPLITS},
                **{f"{s}_bytes_per_token": metrics[s]["bytes_per_token"] for s in SPLITS},
            }
        )
        tracked.set_outputs(
            {
                **{f"{s}_tokens": read_manifest(paths.token_split(s)).sha256 for s in SPLITS},
                "tokenizer": sha256_file(paths.tokenizer_file),
                "tokenize_metrics": sha256_file(paths.tokenize_metrics),
            }
        )
        tracked.log_artifact(paths.tokenizer_file, "tokenizer")
        tracked.log_artifact(paths.tokenize_metrics)
        tracked.log_artifact(paths.tokenize_timing)


if __name__ == "__main__":
    run_main("tokenize", main)
