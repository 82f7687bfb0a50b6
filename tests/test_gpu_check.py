"""``bench/gpu_check.sh`` (the GPU acceptance) where no GPU is: it parses, and it refuses at once,
with a non-zero exit and a message saying why, before starting any step. Its summary table says
"did not run" / "unmeasured" for what no step produced, never a figure."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_gpu_check_parses():
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_refuses_without_a_cuda_device(tmp_path):
    # No device visible, whatever the machine has; the refusal comes before any step, so a
    # generous timeout only guards against a hang (it takes seconds: one torch import).
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable,
           "GPU_CHECK_OUT": str(tmp_path / "out")}  # fmt: skip
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "gpu_check: no CUDA device visible" in done.stderr
    assert "###" not in done.stdout and not (tmp_path / "out").exists()  # no step started


def test_the_summary_leaves_what_did_not_run_unmeasured(tmp_path):
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_steps.py"), "summary", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| triton layer vs torch | did not run | ≥ 1.3x: unmeasured |" in done.stdout
    assert "| self-check bfloat16 | did not run | - |" in done.stdout
