"""The malloc settings of the train and evaluate processes: freed buffers are reused without page
faults, a user's own allocator choice is left alone, and only those two stages set them."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.host_memory import _user_allocator_choice

REPO = Path(__file__).resolve().parents[1]
MIB_PAGES = (1 << 20) // os.sysconf("SC_PAGE_SIZE")

# Twelve steps of a step's pattern: two buffers (32 and 16 MiB) allocated, touched, added into a
# third, and freed; counts the page faults of the last four, by when the heap has grown
# to hold the step: a buffer mapped fresh faults every page in, a reused heap block none.
ALLOCATE_AND_FREE = """
import json, resource, sys, torch
from pipeline.host_memory import keep_freed_host_memory
line = keep_freed_host_memory() if sys.argv[1] == "keep" else ""
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for step in range(12):
    if step == 8:
        before = faults()
    x, y = torch.empty(32 << 20, dtype=torch.uint8), torch.empty(16 << 20, dtype=torch.uint8)
    x.fill_(1)
    y.fill_(1)
    z = x[: 16 << 20] + y
    del x, y, z
print(json.dumps({"line": line, "faults": faults() - before}))
"""

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's malloc's",
)


def allocate_and_free(mode: str, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    done = subprocess.run(
        [sys.executable, "-c", ALLOCATE_AND_FREE, mode],
        env={**clean, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


@glibc_only
def test_freed_buffers_are_reused_without_page_faults_where_the_defaults_fault_them_in():
    kept, default = allocate_and_free("keep"), allocate_and_free("default")
    assert "keeps freed blocks" in kept["line"]
    assert kept["faults"] < MIB_PAGES
    assert default["faults"] > 16 * MIB_PAGES  # what the settings remove


@glibc_only
def test_an_allocator_the_user_set_is_left_alone():
    tuned = allocate_and_free("keep", GLIBC_TUNABLES="glibc.malloc.mmap_threshold=65536")
    assert tuned["line"] == "host memory: the allocator as GLIBC_TUNABLES sets it"
    assert tuned["faults"] > 16 * MIB_PAGES  # the user's (small) threshold holds


def test_the_users_choice_is_read_from_the_environment():
    assert _user_allocator_choice({}) is None
    assert _user_allocator_choice({"GLIBC_TUNABLES": "glibc.cpu.x86_rep_movsb_threshold=1"}) is None
    assert _user_allocator_choice({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) == (
        "GLIBC_TUNABLES"
    )
    assert _user_allocator_choice({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
    assert _user_allocator_choice({"MALLOC_ARENA_MAX": "2"}) is None  # not a MALLOC_*_ setting
    assert _user_allocator_choice({"MALLOC_TOP_PAD_": "0"}) == "MALLOC_TOP_PAD_"


@pytest.mark.parametrize(("stage", "keeps"), [("evaluate", True), ("prepare", False)])
def test_the_stages_that_step_the_model_set_host_memory_first_and_the_others_leave_it(
    tmp_path, stage_env, stage, keeps
):
    """Train (tests/train/test_stage.py) and evaluate say how their process keeps memory before
    anything else, even when the stage then fails (here: no params.yaml); prepare never sets it."""
    done = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}"],
        cwd=tmp_path,
        env=stage_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "params.yaml: file not found" in done.stderr
    assert ("host memory: " in done.stderr) == keeps
