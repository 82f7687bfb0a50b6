"""Fixtures of the pipeline-level tests: tiny full-pipeline params, a live MLflow server, and
MLflow's UI in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
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
# MLflow's UI is a React app of several MB of JavaScript: on two busy cores a page takes tens of
# seconds to parse and render, so every wait is this long (and bounded).
BROWSER_WAIT_SECONDS = 120
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


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
        # no job runner: eight huey worker processes for GenAI jobs the pipeline never submits
        env={
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
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


@pytest.fixture(scope="module")
def chromium() -> Iterator:
    """Headless Chromium under Selenium, through the chromedriver on PATH (Debian's ``chromium``
    and ``chromium-driver``; .ci/run installs them as root). Skips only where either is missing."""
    browser = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver_path = shutil.which("chromedriver")
    if browser is None or driver_path is None:
        pytest.skip(
            "no Chromium and chromedriver on PATH: apt-get install chromium chromium-driver "
            "(.ci/run does so when it runs as root)"
        )
    from selenium import webdriver  # here: bench/gpu_steps.py reads this file for TINY_PIPELINE
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
        "--disable-dev-shm-usage",  # containers often have a 64 MB /dev/shm
        "--window-size=1600,1000",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_page_load_timeout(BROWSER_WAIT_SECONDS)
    try:
        yield driver
    finally:
        driver.quit()


CSS, XPATH = "css selector", "xpath"  # the values of Selenium's By.CSS_SELECTOR and By.XPATH
RUN_NAME = "[role=gridcell][col-id='attributes.`Run Name`']"  # a cell of the runs table
CURVE = ".js-plotly-plot .scatterlayer .trace"  # a line of a Plotly line chart


class MlflowUi:
    """MLflow's React UI in a Selenium driver: explicit waits (``BROWSER_WAIT_SECONDS``) for
    elements found by their text; on a timeout a screenshot and the page's text in the failure."""

    def __init__(self, driver, uri: str, screenshots: Path) -> None:
        self.driver, self.uri, self.screenshots = driver, uri, screenshots
        self.wait_s = BROWSER_WAIT_SECONDS

    def open(self, route: str) -> None:
        self.driver.get(f"{self.uri}/{route}")

    def text(self) -> str:
        return self.driver.find_element(CSS, "body").text

    def shown(self, text: str) -> list:
        """The elements whose whole text is ``text``."""
        return self.driver.find_elements(XPATH, f"//*[normalize-space()='{text}']")

    def run_names(self) -> list[str]:
        """The run names the runs table shows."""
        return [link.text for link in self.driver.find_elements(CSS, f"{RUN_NAME} a")]

    def curves(self) -> int:
        """How many lines the page's line charts draw."""
        return len(self.driver.find_elements(CSS, CURVE))

    def wait(self, what: str, condition):
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        waiting = WebDriverWait(
            self.driver, self.wait_s, ignored_exceptions=(StaleElementReferenceException,)
        )
        try:
            return waiting.until(condition)
        except TimeoutException:
            shot = self.screenshots / "timeout.png"
            self.driver.save_screenshot(str(shot))
            pytest.fail(
                f"{what}: not shown within {self.wait_s} s at {self.driver.current_url} "
                f"(screenshot {shot}); the page reads:\n{self.text()[:3000]}"
            )

    def wait_for_chart(self, *texts: str) -> None:
        """Until a Plotly chart on the page shows every one of ``texts`` (axes, legend)."""

        def drawn(driver) -> bool:
            charts = driver.find_elements(CSS, ".js-plotly-plot")
            return any(all(text in chart.text for text in texts) for chart in charts)

        self.wait(f"a chart showing {', '.join(texts)}", drawn)

    def table_row(self, header: str) -> list[str]:
        """The cells of the table row headed ``header`` (compare page: one cell per run)."""
        row = f"//tr[./th[normalize-space()='{header}']]"
        self.wait(f"the row {header!r}", lambda d: d.find_elements(XPATH, row))
        return [cell.text for cell in self.driver.find_elements(XPATH, f"{row}/td")]

    def expand_parent_rows(self) -> None:
        """Show the runs nested under parent runs, one expand button per parent row."""
        expanders = f"{RUN_NAME} button"  # a parent's row only: its child runs start collapsed
        count = len(self.driver.find_elements(CSS, expanders))
        for index in range(count):  # each click re-renders the table: find the buttons again
            self.driver.find_elements(CSS, expanders)[index].click()

    def screenshot(self, name: str) -> None:
        for close in self.driver.find_elements(CSS, "button[aria-label='Close']"):
            close.click()  # the assistant side panel: it only hides the page
        self.driver.save_screenshot(str(self.screenshots / f"{name}.png"))


@pytest.fixture
def mlflow_ui(chromium, tmp_path):
    """``mlflow_ui(uri)``: :class:`MlflowUi` over the server at ``uri`` in headless Chromium,
    saving screenshots into the test's temporary directory."""
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()
    return lambda uri: MlflowUi(chromium, uri, screenshots)
