"""DVC stage ``prepare``: raw documents → cleaned train/validation/test Parquet shards, benchmark
items, and the word categories the routing analysis labels tokens with.

``python -m stages.prepare`` (run from the repository root, as DVC does) writes
``data/prepared/<split>/<split>-NNNNN.parquet`` + ``manifest.json`` (:mod:`pipeline.data.prepared`),
``data/prepared/stats.json``, ``data/benchmarks/`` and ``data/prepared/word_categories.json``.
The source is read as units (:func:`pipeline.data.sources.plan_units`) by
``prepare.num_workers`` processes, then merged (:mod:`pipeline.data.corpus`).

Across machines (:mod:`pipeline.data.jobs`): ``python -m stages.prepare --shard I/N`` cleans
units ``I, I+N, ...`` into ``data/prepared/.staging/``; once all N jobs are done,
``python -m stages.prepare --merge`` writes the same outputs the one command writes.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
from pathlib import Path

from pipeline.config import Params, load_params
from pipeline.data.corpus import clean_unit, merge_units
from pipeline.data.digests import record_digests
from pipeline.data.files import glob_root, no_document
from pipeline.data.jobs import (
    fresh_dir,
    missing_tasks,
    parse_shard,
    plan_digest,
    read_result,
    replace_dir,
    run_tasks,
    select,
    write_marker,
)
from pipeline.data.prepared import iter_texts, read_prepared
from pipeline.data.sources import SourceUnit, iter_unit, plan_units
from pipeline.data.word_categories import WordCategories, write_word_categories
from pipeline.io import sha256_file, write_json
from pipeline.paths import SPLITS, Paths
from pipeline.tracking import stage_run
from stages.common import run_main

log = logging.getLogger("stages.prepare")


def source_word_categories(params: Params) -> WordCategories:
    """Every word's category where the source knows it (the synthetic generator), else none."""
    from pipeline.data.synthetic import WORD_PATTERN, word_categories  # see merge

    words = word_categories() if params.prepare.source == "synthetic" else {}
    return WordCategories(WORD_PATTERN, words)


def task(params: Params, unit: SourceUnit) -> dict:
    """What a unit's completion marker must name: the unit and every param that shapes it."""
    shaping = params.prepare.model_dump(mode="json", exclude={"num_workers"})
    return {"unit": unit.key, "params": plan_digest([params.seed, shaping])}


def anchored(params: Params, paths: Paths) -> Params:
    """``params`` with a relative ``prepare.files.glob`` taken from ``paths.root`` (the
    repository root, where DVC runs the stage)."""
    files = params.prepare.files
    if files.glob is None or Path(files.glob).is_absolute():
        return params
    files = files.model_copy(update={"glob": str(paths.root / files.glob)})
    return params.model_copy(update={"prepare": params.prepare.model_copy(update={"files": files})})


def clean(params: Params, paths: Paths, unit: SourceUnit) -> None:
    """One task: clean ``unit`` into the staging directory, marker last."""
    documents = iter_unit(params.prepare, params.seed, unit)
    result = clean_unit(params.prepare, documents, _unit_dir(paths, unit))
    result["inputs"] = _files_digest(params, unit)
    write_marker(_marker(paths, unit), task(params, unit), result)


def run_shard(params: Params, paths: Paths, shard: tuple[int, int]) -> int:
    """Clean this job's units (``I, I+N, ...``); returns how many."""
    params = anchored(params, paths)
    units = select(plan_units(params.prepare, params.seed), shard)
    run_tasks(clean, [(params, paths, u) for u in units], params.prepare.num_workers)
    return len(units)


def merge(params: Params, paths: Paths) -> dict:
    """Check every unit's marker, merge them into the splits, write the other outputs."""
    params = anchored(params, paths)
    units = plan_units(params.prepare, params.seed)
    missing_tasks([(_marker(paths, u), task(params, u)) for u in units], "prepare")
    results = [read_result(_marker(paths, u), task(params, u)) for u in units]
    try:
        _refuse_empty_cut_files(params, units, results)
        out = {s: fresh_dir(paths.prepare_staging / "out" / s) for s in SPLITS}
        corpus = merge_units(
            params.prepare,
            [(_unit_dir(paths, u), r) for u, r in zip(units, results, strict=True)],
            out,
        )
        stats = corpus.to_json({s: out[s] / "manifest.json" for s in SPLITS})
        for split in SPLITS:
            replace_dir(out[split], paths.prepared_split(split))
    finally:  # the units' parts are consumed (moved or refused): a retry re-runs them
        shutil.rmtree(paths.prepare_staging, ignore_errors=True)
    # Imported here: a spawned worker imports this module for clean() and needs no generator.
    from pipeline.data.synthetic import write_benchmark_sets

    train = read_prepared(paths.prepared_split("train"))
    stats["benchmark_items"] = write_benchmark_sets(
        params.seed,
        params.prepare.synthetic.benchmark_items.model_dump(),
        paths,
        training_text=lambda: iter_texts(train, 4096),
    )
    record_digests(paths.benchmarks_dir)  # evaluate checks the items against these
    if params.prepare.source == "files":  # the lineage of the inputs (the MLflow tag too)
        stats["input_files_sha256"] = _digest("".join(r["inputs"] for r in results))
    write_word_categories(paths.word_categories, source_word_categories(params))
    write_json(paths.prepare_stats, stats)
    for split in SPLITS:
        s = stats["splits"][split]
        log.info(
            "%-10s %8d documents %12d bytes %4d shards",
            split,
            s["documents"],
            s["bytes"],
            s["shards"],
        )
    return stats


def run(params: Params, paths: Paths) -> dict:
    """Clean and split the configured source; write the benchmark items; return the stats.
    Bad input stops it with nothing written (the staging directory is removed)."""
    fresh_dir(paths.prepare_staging)
    try:
        run_shard(params, paths, (0, 1))
    except BaseException:
        shutil.rmtree(paths.prepare_staging, ignore_errors=True)
        raise
    return merge(params, paths)


def _refuse_empty_cut_files(params: Params, units: list[SourceUnit], results: list[dict]) -> None:
    """A cut ``.jsonl`` file's ranges are tasks of their own, any of which may hold no line:
    the file is refused, as an uncut one is when read, when its ranges read no document."""
    read: dict[str, int] = {}
    for unit, result in zip(units, results, strict=True):
        if "bytes" in unit.key:
            ((path, _, _),) = unit.key["files"]
            read[path] = read.get(path, 0) + result["read"]
    for path, documents in read.items():
        if documents == 0:
            raise no_document(params.prepare.files, path)


def _unit_dir(paths: Paths, unit: SourceUnit):
    return paths.prepare_staging / f"unit-{unit.index:05d}"


def _marker(paths: Paths, unit: SourceUnit):
    return paths.prepare_staging / f"unit-{unit.index:05d}.done.json"


def _files_digest(params: Params, unit: SourceUnit) -> str:
    """A digest of the unit's input files, by name under the glob's root and content (computed
    by the task, in parallel, rather than by one process before the work)."""
    files = unit.key.get("files", [])
    root = glob_root(params.prepare.files.glob) if files else None
    span = unit.key.get("bytes")  # a cut file's task hashes its own range
    where = f"[{span[0]}:{span[1]}]" if span else ""
    return _digest(
        "".join(
            f"{Path(p).relative_to(root)}{where}\0{sha256_file(p, *(span or ()))}\n"
            for p, _, _ in files
        )
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description="DVC stage prepare (module docstring)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--shard", metavar="I/N", help="clean units I, I+N, ... (no tracking)")
    group.add_argument("--merge", action="store_true", help="merge the shard jobs' units")
    args = parser.parse_args()
    params = load_params()
    paths = Paths()
    if args.shard:
        done = run_shard(params, paths, parse_shard(args.shard))
        log.info("job %s: cleaned %d units into %s", args.shard, done, paths.prepare_staging)
        return
    with stage_run("prepare", params, {}, {}, paths.prepare_run) as tracked:
        stats = merge(params, paths) if args.merge else run(params, paths)
        tracked.log_metrics(
            {
                "documents_read": stats["documents_read"],
                "duplicates_removed": stats["duplicates_removed"],
                "too_short_removed": stats["too_short_removed"],
                **{f"{k}_documents": v["documents"] for k, v in stats["splits"].items()},
                **{f"{k}_bytes": v["bytes"] for k, v in stats["splits"].items()},
            }
        )
        tracked.set_outputs(
            {
                **{split: v["sha256"] for split, v in stats["splits"].items()},
                "word_categories": sha256_file(paths.word_categories),
                "prepare_stats": sha256_file(paths.prepare_stats),
            }
        )
        if "input_files_sha256" in stats:
            tracked.set_tags({"input.files.sha256": stats["input_files_sha256"]})
        tracked.log_artifact(paths.prepare_stats)


if __name__ == "__main__":
    run_main("prepare", main)
