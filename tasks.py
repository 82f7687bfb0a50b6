#!/usr/bin/env python3
"""Quick-start entry point: creates or reuses ``.venv``, installs the lock, runs a task.

    python3 tasks.py pipeline      # install, then `dvc repro` the default pipeline (CPU, offline)
    python3 tasks.py test [ARGS]   # install, then pytest on every CPU (ARGS go to pytest)
    python3 tasks.py lock          # rewrite requirements/lock.txt from the current .venv

Standard library only, so it runs on a bare Python >= 3.10. The venv is reinstalled only when
``requirements/lock.txt`` or ``pyproject.toml`` changed since the last install.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
LOCK = ROOT / "requirements" / "lock.txt"
STAMP = VENV / ".moe-pipeline-install"
LOCK_PYTHON = (3, 11)  # the interpreter the lock was resolved with
TORCH_PIN = "torch==2.13.0"  # also in the lock: torch must be pinned in the same pip command

# Offline, quiet, reproducible: no telemetry, no hub downloads.
RUN_ENV = {
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "true",
}


def venv_bin(name: str) -> str:
    return str(VENV / ("Scripts" if os.name == "nt" else "bin") / name)


def install_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in (LOCK, ROOT / "pyproject.toml"):
        digest.update(path.read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def ensure_venv() -> None:
    """Create ``.venv`` and install the project into it, unless it is already up to date."""
    fingerprint = install_fingerprint()
    if STAMP.exists() and STAMP.read_text() == fingerprint:
        return
    if not VENV.exists():
        print(f"[tasks] creating {VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    # --no-compile, then compileall on every core: pip byte-compiles the ~3 GB of packages on one
    # core (about 1.5 of the 2 install minutes on 2 cores); the .pyc files must exist up front
    # because environments with PYTHONDONTWRITEBYTECODE never cache them at import time.
    pip = [
        venv_bin("python"),
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-compile",
    ]
    subprocess.run([*pip, "-q", "--upgrade", "pip"], check=True)
    if sys.version_info[:2] == LOCK_PYTHON:
        print(f"[tasks] installing {LOCK.relative_to(ROOT)} (exact versions)", flush=True)
        subprocess.run([*pip, "-q", "-r", str(LOCK)], check=True)
    else:
        print(
            f"[tasks] Python {sys.version_info[0]}.{sys.version_info[1]}: the lock is for "
            f"{LOCK_PYTHON[0]}.{LOCK_PYTHON[1]}; installing version ranges from pyproject.toml",
            flush=True,
        )
        subprocess.run([*pip, "-q", TORCH_PIN, "-e", f"{ROOT}[dev]"], check=True)
    subprocess.run([*pip, "-q", "--no-deps", "-e", str(ROOT)], check=True)
    byte_compile_packages()
    STAMP.write_text(fingerprint)


def byte_compile_packages() -> None:
    """Write the venv's .pyc files in parallel; a file that does not compile is only slower."""
    print(f"[tasks] byte-compiling {VENV} on all cores", flush=True)
    subprocess.run(
        [venv_bin("python"), "-m", "compileall", "-qq", "-j", "0", str(VENV)], check=False
    )


def run_in_venv(argv: list[str]) -> int:
    env = {**os.environ, **RUN_ENV, "VIRTUAL_ENV": str(VENV)}
    env["PATH"] = f"{Path(venv_bin('python')).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(argv, cwd=ROOT, env=env).returncode


def pipeline(args: list[str]) -> int:
    if not (ROOT / ".git").exists():
        sys.exit("[tasks] dvc repro needs a git checkout: run this from a `git clone` of the repo")
    return run_in_venv([venv_bin("dvc"), "repro", *args])


def test(args: list[str]) -> int:
    # Run serially, the suite kept 1.03 of 2 cores busy (it waits on the processes it starts and
    # imports packages on one core), so a worker per CPU (tests/conftest.py) takes it from 654 s
    # to 429-523 s on the 2-CPU build machine (2026-11-30, six runs); whole test files go to a
    # worker, so a module's fixtures are built once. ARGS after these override them (-n 0).
    xdist = ["-n", "auto", "--dist", "loadfile"]
    return run_in_venv([venv_bin("python"), "-m", "pytest", *xdist, *args])


def lock(_args: list[str]) -> int:
    frozen = subprocess.run(
        [venv_bin("python"), "-m", "pip", "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    pins = [line for line in frozen if not line.lower().startswith("moe-pipeline")]
    pins = [TORCH_PIN if line.startswith("torch==") else line for line in pins]
    header = [
        "# Exact versions of a CPU install that passed the test suite (Python 3.11, linux x86_64).",
        "# Regenerate: python3 tasks.py lock (pip freeze of .venv; torch pinned without its +cpu tag).",
    ]
    LOCK.write_text("\n".join(header + pins) + "\n")
    return 0


TASKS = {"pipeline": pipeline, "test": test, "lock": lock}


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in TASKS:
        print(__doc__)
        return 2
    if sys.argv[1] != "lock":  # lock reads the venv as it is
        ensure_venv()
    return TASKS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
