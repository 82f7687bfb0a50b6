"""DVC stage ``prepare``: raw documents → cleaned train/validation/test Parquet, benchmark items,
and the word categories the routing analysis labels tokens with.

``python -m stages.prepare`` (run from the repository root, as DVC does).
"""

from __future__ import annotations

import hashlib
import json
import logging

from pipeline.config import Params, load_params
from pipeline.data.corpus import write_splits
from pipeline.data.sources import iter_documents
from pipeline.data.synthetic import WORD_PATTERN, generate_benchmarks, word_categories
from pipeline.data.word_categories import WordCategories, write_word_categories
from pipeline.io import atomic_path, sha256_file, write_json
from pipeline.paths import SPLITS, Paths
from pipeline.tracking import stage_run
from stages.common import run_main

log = logging.getLogger("stages.prepare")


def write_benchmarks(seed: int, n_items: int, paths: Paths) -> dict[str, int]:
    """Held-out items with known answers, one JSONL file per task (lm-eval ``json`` datasets)."""
    counts = {}
    for task, items in generate_benchmarks(seed, n_items).items():
        with atomic_path(paths.benchmark(task)) as tmp:
            tmp.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in items))
        counts[task] = len(items)
    return counts


def source_word_categories(params: Params) -> WordCategories:
    """Every word's category where the source knows it (the synthetic generator), else none."""
    words = word_categories() if params.prepare.source == "synthetic" else {}
    return WordCategories(WORD_PATTERN, words)


def source_inputs(params: Params) -> dict[str, str]:
    """A digest of the local input files (their names and contents), for lineage tags."""
    if params.prepare.source != "files":
        return {}
    import glob

    digest = hashlib.sha256()
    for path in sorted(glob.glob(params.prepare.files.glob, recursive=True)):
        digest.update(f"{path}\0{sha256_file(path)}\n".encode())
    return {"files": digest.hexdigest()}


def run(params: Params, paths: Paths) -> dict:
    """Clean and split the configured source; write the benchmark items; return the stats."""
    documents = iter_documents(params.prepare, params.seed)
    stats = write_splits(
        documents, params.prepare, {split: paths.parquet(split) for split in SPLITS}
    )
    stats["benchmark_items"] = write_benchmarks(
        params.seed, params.prepare.synthetic.benchmark_items, paths
    )
    write_word_categories(paths.word_categories, source_word_categories(params))
    write_json(paths.prepare_stats, stats)
    for split in SPLITS:
        s = stats["splits"][split]
        log.info("%-10s %8d documents %12d bytes", split, s["documents"], s["bytes"])
    return stats


def main() -> None:
    params = load_params()
    paths = Paths()
    with stage_run("prepare", params, source_inputs(params), {}, paths.prepare_run) as tracked:
        stats = run(params, paths)
        tracked.log_metrics(
            {
                "documents_read": stats["documents_read"],
                "duplicates_removed": stats["duplicates_removed"],
                "too_short_removed": stats["too_short_removed"],
                **{f"{k}_documents": v["documents"] for k, v in stats["splits"].items()},
                **{f"{k}_bytes": v["bytes"] for k, v in stats["splits"].items()},
            }
        )
        tracked.set_tags({f"output.{k}.sha256": v["sha256"] for k, v in stats["splits"].items()})
        tracked.log_artifact(paths.prepare_stats)


if __name__ == "__main__":
    run_main("prepare", main)
