"""Shared test set-up: offline and telemetry-free, an isolated MLflow store per test, markers,
and scratch git + DVC copies of the project for the pipeline-level tests."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

for key, value in {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
}.items():
    os.environ.setdefault(key, value)


def _interpret_triton_without_cuda() -> None:
    """Run Triton kernels under the interpreter when there is no CUDA device.

    Triton reads ``TRITON_INTERPRET`` when a kernel is *defined*, and any test module (or an
    import it triggers) may be the first to import :mod:`pipeline.kernels`, so it is set here,
    before pytest imports a single test module. With CUDA present the compiled kernels run.
    """
    try:
        import torch
    except ImportError:
        return
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_cuda()


TRITON_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture(
    params=[
        pytest.param("cpu", id="cpu"),
        pytest.param("cuda", id="cuda", marks=pytest.mark.gpu),
    ]
)
def triton_device(request):
    """Where Triton kernels run in this test: CPU tensors under the interpreter, and CUDA
    (``gpu``-marked) where a GPU is present; the CPU case skips when the kernels are compiled
    for a GPU (they cannot take CPU tensors then)."""
    import torch

    if request.param == "cpu" and not TRITON_INTERPRET:
        pytest.skip("kernels are compiled for the GPU here; CPU runs need TRITON_INTERPRET=1")
    return torch.device(request.param)


@pytest.fixture
def one_thread():
    """Tiny shapes gain nothing from threads (and on a shared 2-core machine an OpenMP barrier
    waiting for a descheduled thread stalls each op by ~100 ms); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A fresh sqlite MLflow store for one test (never the repository's mlflow.db)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test")
    return uri


SEED_VARIABLE = "MOE_TEST_SEED"


def pytest_configure(config):
    """One seed for every test case drawn at random, in the environment: xdist's workers start
    after this hook and inherit it, so they draw the same cases and collect the same test ids."""
    os.environ.setdefault(SEED_VARIABLE, str(random.randrange(2**31)))


def pytest_report_header(config):
    seed = os.environ[SEED_VARIABLE]
    return f"test cases drawn at random: {SEED_VARIABLE}={seed} (set it to replay them)"


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: unknown where it is not installed
def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (``tasks.py test``): one worker per CPU this process may run on, and at most
    one per 3 GiB of memory (two workers and the processes their tests start took at most 3.2 GiB
    above idle on a 2-CPU, 24 GiB machine, 2026-11-30); ``PYTEST_XDIST_AUTO_NUM_WORKERS`` sets the
    count instead, as xdist documents."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # the user's count, which xdist's own hook reads
    if not hasattr(os, "sched_getaffinity"):  # not Linux: all of them
        return os.cpu_count() or 1
    cpus = len(os.sched_getaffinity(0))
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(cpus, int(memory_gib // 3)))


def pytest_collection_modifyitems(config, items):
    """Skip ``gpu`` tests when no CUDA device is present (they run in bench/gpu_check.sh)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


REPO = Path(__file__).resolve().parents[1]


def stage_environment(mlflow_uri: str) -> dict[str, str]:
    """The environment of a stage subprocess: this venv first on PATH, this checkout importable,
    the MLflow store ``mlflow_uri``."""
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "MLFLOW_EXPERIMENT_NAME": "test"}
    env["PYTHONPATH"] = str(REPO)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


@pytest.fixture
def stage_env(mlflow_uri) -> dict[str, str]:
    """:func:`stage_environment` with the test's MLflow store."""
    return stage_environment(mlflow_uri)


@dataclass
class ScratchRepo:
    """A git + DVC copy of the project's code, ``dvc.yaml`` and ``params.yaml`` in a temp dir."""

    path: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(args, cwd=self.path, env=self.env, capture_output=True, text=True)
        if check:
            assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def dvc(self, *args: str) -> str:
        return self.run(sys.executable, "-m", "dvc", *args).stdout

    def git(self, *args: str) -> str:
        return self.run("git", "-c", "user.name=t", "-c", "user.email=t@t", *args).stdout

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, params: dict) -> None:
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys replaced, nested dicts merged (neither is modified)."""
    out = dict(base)
    for key, value in override.items():
        both_dicts = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = merge(out[key], value) if both_dicts else value
    return out


@pytest.fixture
def merge_params() -> Callable[[dict, dict], dict]:
    """:func:`merge`, for test modules (they cannot import conftest)."""
    return merge


def new_scratch_repo(path: Path, env: dict[str, str], override: dict) -> ScratchRepo:
    """The project's params.yaml with ``override`` merged in, committed in a fresh git + DVC
    repository at ``path`` whose commands run in ``env``."""
    repo = ScratchRepo(path, {**env, "DVC_NO_ANALYTICS": "1"})
    for package in ("pipeline", "stages", "evaluation"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(REPO / package, repo.path / package, ignore=ignore)
    shutil.copy(REPO / "dvc.yaml", repo.path)
    repo.set_params(merge(yaml.safe_load((REPO / "params.yaml").read_text()), override))
    repo.git("init", "-q")
    repo.dvc("init", "-q")
    repo.git("add", "-A")
    repo.git("commit", "-qm", "scratch")
    return repo


@pytest.fixture
def make_scratch_repo(tmp_path, stage_env) -> Callable[..., ScratchRepo]:
    """``make_scratch_repo(params_override, name="repo")``: :func:`new_scratch_repo` in the
    test's temporary directory, tracking into the test's MLflow store."""

    def make(override: dict, name: str = "repo") -> ScratchRepo:
        return new_scratch_repo(tmp_path / name, stage_env, override)

    return make


@pytest.fixture(scope="session")
def scratch_repo_at() -> Callable[[Path, dict, str], ScratchRepo]:
    """``scratch_repo_at(path, params_override, mlflow_uri)``: :func:`new_scratch_repo` for
    fixtures that outlive one test (module-scoped pipeline workspaces)."""
    return lambda path, override, uri: new_scratch_repo(path, stage_environment(uri), override)
