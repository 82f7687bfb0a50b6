"""Fixtures of the pipeline-level tests: tiny full-pipeline params and a live MLflow server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# Every stage, in seconds rather than minutes: a 0.3 MB corpus, a 2-layer model, 30 steps.
TINY_PIPELINE = {
    "seed": 11,
    "prepare": {"synthetic": {"size_mb": 0.3, "benchmark_items": {"dev": 12, "test": 12}}},
    "tokenize": {"vocab_size": 600},
    "train": {
        "model": {
            "d_model": 32,
            "n_layers": 2,
            "n_heads": 2,
            "n_kv_heads": 1,
            "dense_hidden": 64,
            "max_seq_len": 64,
            "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
        },
        "seq_len": 64,
        "micro_batch_size": 8,
        "max_steps": 30,
        "runtime": {"accelerator": "cpu", "checkpoint_every": 10},
        "monitor": {"log_every": 5, "val_every": 10, "val_batches": 2, "peak_flops": 1.0e11},
    },
    "evaluate": {
        "limit": 12,
        "batch_size": 8,
        "perplexity_max_tokens": 2048,
        "routing_max_tokens": 2048,
        "generation": {"max_new_tokens": 8},
    },
}

SERVER_START_SECONDS = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_pipeline() -> dict:
    return TINY_PIPELINE


@pytest.fixture(scope="session")
def mlflow_rest():
    return rest


def rest(uri: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    """One call of MLflow's REST API (GET with ``query``, or POST with a JSON ``body``)."""
    url = f"{uri}/api/2.0/mlflow/{endpoint}"
    if query:
        url += "?" + "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in query.items())
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1 with a sqlite store and proxied artifacts; its URI."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below, after the server
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],  # fmt: skip
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(uri, server, root / "server.log")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def _wait_healthy(uri: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(
        f"mlflow server not healthy after {SERVER_START_SECONDS} s:\n{log.read_text()}"
    )
