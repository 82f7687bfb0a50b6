"""The data stages at scale: worker scaling with one thread each, and peak memory vs corpus size.

    python bench/data_scaling.py scaling [--mb 32] [--files 8] [--stages prepare tokenize]
    python bench/data_scaling.py memory [--sizes 100 1000]

``scaling``: a corpus of ``--files`` equal JSONL files (synthetic text, ``--mb`` MB in all, two
prepare tasks per file) is cleaned by prepare's tasks and its shards encoded by tokenize's tasks
(``run_shard``: the parallel part; the merges are renames and manifests), with
``num_workers`` 1 and 2 in rotation (2 warm-ups and 7 rotations by default, the statistics of
:mod:`timing`; ``--stages prepare`` leaves tokenize, and its tokenizer training, out). Every
process has one thread: ``RAYON_NUM_THREADS=1`` and ``TOKENIZERS_PARALLELISM=false`` for the
tokenizer, ``OMP_NUM_THREADS=1`` for the rest, set before anything starts. Prints MB/s and CPU
seconds per worker count and the speed-up (median
of the per-rotation ratios); equal CPU seconds mean the workers add no work, so the wall-clock
speed-up is what the machine's free cores allow (other load shows in the load average).

``memory``: ``python -m stages.prepare`` then ``python -m stages.tokenize`` in a scratch
directory on the synthetic source at each ``--sizes`` MB (one worker each, few benchmark items),
sampling the resident memory of the stage's process tree every 0.1 s; prints the peaks and wall
times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_THREAD = {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
os.environ.update(ONE_THREAD)  # before numpy, pyarrow or tokenizers start thread pools

REPO = Path(__file__).resolve().parents[1]


def write_corpus(root: Path, mb: float, files: int) -> None:
    from pipeline.data.synthetic import generate_documents

    docs = generate_documents(0, mb, episode_share=0.8)
    handles = [open(root / f"part-{i:03d}.jsonl", "w") for i in range(files)]  # noqa: SIM115
    for i, text in enumerate(docs):
        handles[i % files].write(json.dumps({"text": text}) + "\n")
    for handle in handles:
        handle.close()


def scaling(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="data-scaling.") as tmp:
        scale_in(Path(tmp), args)


def scale_in(root: Path, args: argparse.Namespace) -> None:
    from timing import ratio, rotation, short_run_note

    from pipeline.config import parse_params
    from pipeline.data.jobs import fresh_dir
    from pipeline.paths import Paths
    from stages import prepare, tokenize

    (root / "corpus").mkdir()
    write_corpus(root / "corpus", args.mb, args.files)
    file_mb = args.mb / args.files
    paths = Paths(root=root)
    base = {
        "prepare": {
            "source": "files",
            "files": {"glob": "corpus/*.jsonl"},
            # Each file a little over shard_mb: prepare cuts it into two line-aligned halves, two
            # tasks per file (one task per file before files were cut, 2026-11-30).
            "shard_mb": file_mb * 0.9,
            "synthetic": {"benchmark_items": {"dev": 10, "test": 10}},
        },
        "tokenize": {"vocab_size": 4096},
    }

    def with_workers(n: int):
        return parse_params(
            {
                **base,
                "prepare": {**base["prepare"], "num_workers": n},
                "tokenize": {**base["tokenize"], "num_workers": n},
            }
        )

    prepare.run(with_workers(1), paths)
    shards = []
    if "tokenize" in args.stages:
        fresh_dir(paths.tokenize_staging)
        tokenize.train(with_workers(1), paths)
        shards = tokenize.plan(paths)
    shards_mb = sum(task.source.bytes for task in shards) / 1e6

    def clean(n: int) -> None:
        fresh_dir(paths.prepare_staging)
        prepare.run_shard(with_workers(n), paths, (0, 1))

    def encode(n: int) -> None:
        tokenize.run_shard(with_workers(n), paths, (0, 1))

    cpu: dict[str, list[float]] = {}  # CPU seconds of this process and its workers, per call

    def timed(name: str, work, n: int) -> None:
        before = cpu_seconds()
        work(n)
        cpu.setdefault(name, []).append(cpu_seconds() - before)

    calls = {}
    stages = [(s, w) for s, w in (("prepare", clean), ("tokenize", encode)) if s in args.stages]
    for stage, work in stages:
        for n in (1, 2):
            name = f"{stage} x{n}"
            calls[name] = lambda name=name, work=work, n=n: timed(name, work, n)
    load_before = os.getloadavg()[0]
    times = rotation(calls, args.reps, args.warmups)
    tokenize_input = f", {shards_mb:.1f} MB in {len(shards)} prepared shards (tokenize input)"
    print(
        f"corpus: {args.mb:g} MB in {args.files} files (prepare input)"
        f"{tokenize_input if shards else ''}; one thread per process; "
        f"{args.warmups} warm-ups + {args.reps} rotations"
    )
    print(short_run_note(args.reps, args.warmups))
    print(
        f"1-minute load average before / after: {load_before:.1f} / {os.getloadavg()[0]:.1f} "
        "(processes wanting a core; this machine has 2)"
    )
    print(
        f"| {'stage':<9} | {'workers':>7} | {'median s':>8} | {'min s':>6} | {'MB/s':>6} "
        f"| {'CPU s':>6} |"
    )
    print(f"|{'-' * 11}|{'-' * 9}|{'-' * 10}|{'-' * 8}|{'-' * 8}|{'-' * 8}|")
    for stage, mb in (("prepare", args.mb), ("tokenize", shards_mb)):
        if stage not in args.stages:
            continue
        for n in (1, 2):
            name = f"{stage} x{n}"
            t, med = times[name], statistics.median(times[name])
            used = statistics.median(cpu[name][args.warmups :])  # the warm-ups' are recorded too
            print(
                f"| {stage:<9} | {n:>7} | {med:8.2f} | {min(t):6.2f} | {mb / med:6.2f} "
                f"| {used:6.2f} |"
            )
        speedup, low = ratio(times[f"{stage} x1"], times[f"{stage} x2"])
        print(f"{stage}: 2 workers / 1 worker = {speedup:.3f}x (lower quartile {low:.3f}x)")


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its finished children (the workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def peak_rss(command: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """``(peak MB of resident memory of the process tree, seconds)`` of one command."""
    import psutil

    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL)
    parent = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.1)
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}")
    return peak / 1e6, time.perf_counter() - start


def memory(args: argparse.Namespace) -> None:
    import yaml

    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_TRACKING_URI": "sqlite:///mlflow.db"}
    print(f"| {'corpus MB':>9} | {'stage':<9} | {'peak RSS MB':>11} | {'wall s':>7} |")
    print(f"|{'-' * 11}|{'-' * 11}|{'-' * 13}|{'-' * 9}|")
    for size in args.sizes:
        with tempfile.TemporaryDirectory(prefix="data-memory.") as tmp:
            params = {
                "prepare": {
                    "synthetic": {"size_mb": size, "benchmark_items": {"dev": 10, "test": 10}}
                },
            }
            (Path(tmp) / "params.yaml").write_text(yaml.safe_dump(params))
            for stage in ("prepare", "tokenize"):
                command = [sys.executable, "-m", f"stages.{stage}"]
                peak, wall = peak_rss(command, Path(tmp), env)
                print(f"| {size:>9g} | {stage:<9} | {peak:11.0f} | {wall:7.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    s = sub.add_parser("scaling")
    s.add_argument("--mb", type=float, default=32)
    s.add_argument("--files", type=int, default=8)
    s.add_argument("--reps", type=int, default=7, help="timed rotations")
    s.add_argument("--warmups", type=int, default=2, help="untimed rotations first")
    s.add_argument("--stages", nargs="+", choices=("prepare", "tokenize"),
                   default=["prepare", "tokenize"])  # fmt: skip
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=float, nargs="+", default=[100, 1000])
    args = parser.parse_args()
    scaling(args) if args.what == "scaling" else memory(args)


if __name__ == "__main__":
    main()
