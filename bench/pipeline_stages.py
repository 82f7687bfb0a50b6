"""Wall time and peak memory of each pipeline stage, run the way ``dvc repro`` runs them.

    python bench/pipeline_stages.py            # in a checkout with the venv active
    python bench/pipeline_stages.py --stages train evaluate

Each stage's ``cmd`` from ``dvc.yaml`` runs as a child process, in ``dvc.yaml`` order (which is
the pipeline's dependency order); its peak resident memory is the child's own ``ru_maxrss``
(from ``os.wait4``), so one stage's peak does not hide another's. The stages write their usual
outputs: run it in a scratch clone, then ``dvc commit`` if the results should count as a
``dvc repro``. Lightning's DDP children (``train.runtime.devices`` > 1) are not included in the peak.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stages", nargs="+", help="default: every stage of dvc.yaml")
    return p.parse_args()


def run_stage(cmd: str) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MiB, exit status) of one stage command."""
    argv = shlex.split(cmd)
    if argv[0] == "python":
        argv[0] = sys.executable
    start = time.perf_counter()
    child = subprocess.Popen(argv)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    return time.perf_counter() - start, usage.ru_maxrss / 1024, child.returncode


def main() -> None:
    args = parse_args()
    stages = yaml.safe_load(Path("dvc.yaml").read_text())["stages"]
    names = args.stages or list(stages)
    rows = []
    for name in names:
        print(f"--- {name}: {stages[name]['cmd']}", flush=True)
        seconds, peak, code = run_stage(stages[name]["cmd"])
        if code:
            raise SystemExit(f"stage {name} failed with exit status {code}")
        rows.append((name, seconds, peak))
    print("| stage | wall s | peak RSS MiB |")
    print("|-------|--------|--------------|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.1f} | {peak:.0f} |")
    print(f"| **total** | {sum(r[1] for r in rows):.1f} | {max(r[2] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
