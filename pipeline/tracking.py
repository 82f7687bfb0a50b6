"""MLflow run identity and lineage for every stage execution.

One stage execution = one MLflow run in one experiment (``MLFLOW_EXPERIMENT_NAME``, default
``moe-pipeline``). Lineage travels through DVC itself: each stage writes ``run.json`` (its run id)
as a DVC output, the next stage declares that file as a dependency and tags its own run with the
upstream run ids and the SHA-256 of its inputs. So from a model's run one can walk back to the
exact tokenizer, token shards and corpus it came from, and ``dvc.lock`` pins the same hashes.

Every run carries the git commit (``mlflow.source.git.commit``), a dirty flag, the DVC experiment
name when ``dvc exp run`` started it (``DVC_EXP_NAME``), all of ``params.yaml`` flattened, and the
installed package versions (``environment/pip-freeze.txt``).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.config import Params, flatten_keys
from pipeline.errors import PipelineError
from pipeline.io import read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "moe-pipeline"
_HEALTH_TIMEOUT_S = 5.0


class TrackingError(PipelineError):
    """The MLflow tracking store cannot be reached or used."""


def repo_root(start: Path | None = None) -> Path:
    """The project root, also from inside a DVC experiment's temporary copy.

    ``dvc exp run --queue/--temp`` runs stages in ``<repo>/.dvc/tmp/exps/...``; a sqlite store
    there would vanish with the copy, so the default store always lives in the real root.
    """
    here = (start or Path.cwd()).resolve()
    for parent in (here, *here.parents):
        if parent.name == ".dvc":
            return parent.parent
    return here


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<repo root>/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"


def experiment_name() -> str:
    return os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def check_reachable(uri: str) -> None:
    """Fail fast on an unreachable HTTP tracking server instead of retrying for minutes."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_HEALTH_TIMEOUT_S):
            pass
    except (urllib.error.URLError, OSError) as exc:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({exc}); start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to record locally in mlflow.db"
        ) from None


def git_state() -> dict[str, str]:
    """Commit and dirty flag of the working tree (empty when not in a git checkout)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return {}
    return {"mlflow.source.git.commit": commit, "git.dirty": str(bool(dirty)).lower()}


def pip_freeze() -> str:
    """``name==version`` of every installed distribution, sorted (what ``pip freeze`` shows)."""
    names = {
        f"{dist.metadata['Name']}=={dist.version}" for dist in importlib.metadata.distributions()
    }
    return "\n".join(sorted(names, key=str.lower)) + "\n"


@dataclass
class StageRun:
    """A live MLflow run of one stage; thin wrapper so stages need not touch the client."""

    run_id: str
    experiment_id: str
    uri: str

    @property
    def client(self):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric
        from mlflow.utils.time import get_current_time_millis

        now = get_current_time_millis()
        batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)


def _start(stage: str, params: Params, tags: dict[str, str]) -> StageRun:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    check_reachable(uri)
    client = MlflowClient(uri)
    name = experiment_name()
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    exp_name = os.environ.get("DVC_EXP_NAME")
    run_name = f"{stage}-{exp_name}" if exp_name else stage
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    flat = flatten_keys(params.model_dump(mode="json"))
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(flat.items())])
    return StageRun(run.info.run_id, experiment_id, uri)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    inputs: Mapping[str, str],
    upstream: Mapping[str, Path],
    run_file: Path,
) -> Iterator[StageRun]:
    """Track one stage execution; write ``run_file`` on success, mark the run FAILED otherwise.

    ``inputs`` maps an input's name to its SHA-256; ``upstream`` maps an upstream stage's name to
    the ``run.json`` it wrote, whose run id is recorded as a lineage tag.
    """
    tags = {"pipeline.stage": stage, **git_state()}
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp
    tags.update({f"input.{name}.sha256": digest for name, digest in inputs.items()})
    upstream_ids = {name: read_json(path)["run_id"] for name, path in upstream.items()}
    tags.update({f"upstream.{name}.run_id": run_id for name, run_id in upstream_ids.items()})
    try:
        run = _start(stage, params, tags)
    except TrackingError:
        raise
    except Exception as exc:  # any store failure: say which store, keep the cause
        raise TrackingError(f"MLflow tracking store {tracking_uri()}: {exc}") from exc
    log.info("MLflow run %s (stage %s) in %s", run.run_id, stage, run.uri)
    run.log_text(pip_freeze(), "environment/pip-freeze.txt")
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        run.client.set_terminated(run.run_id, status)
    write_json(
        run_file,
        {
            "run_id": run.run_id,
            "experiment_id": run.experiment_id,
            "stage": stage,
            "upstream": upstream_ids,
        },
    )
