"""Start N gloo worker processes of a script (rank/world in the environment), with a timeout
so that a hang fails the test instead of the CI job."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script: Path, world: int, args: list[str], timeout: float = 60) -> list[str]:
    """Run ``script args`` on ``world`` ranks; return each rank's stdout; raise on failure."""
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(world)
    ]
    outputs, failures = [], []
    for rank, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"rank {rank} did not finish within {timeout} s (hang?)") from None
        outputs.append(out)
        if proc.returncode:
            failures.append(f"rank {rank} exited {proc.returncode}:\n{err[-3000:]}")
    assert not failures, "\n".join(failures)
    return outputs


def lightning_train(
    root: Path, out: Path, args: list[str], timeout: float = 150, returncode: int = 0
) -> dict | None:
    """Run tests/parallel/lightning_worker.py in ``root`` (Lightning launches the other ranks
    itself: no rank variables in the environment), expecting ``returncode``; return rank
    zero's JSON output (None unless it succeeded)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, str(REPO / "tests" / "parallel" / "lightning_worker.py"), str(root)]
        + [str(out), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == returncode, proc.stderr[-4000:]
    return json.loads(out.read_text()) if returncode == 0 else None
