"""MLflow run identity and lineage for every stage execution.

One stage execution = one MLflow run in one experiment (``MLFLOW_EXPERIMENT_NAME``, default
``moe-pipeline``), nested under the run of its pipeline execution (:mod:`pipeline.executions`); the
experiment is tagged ``mlflow.experimentKind`` so the MLflow UI opens it in its
model-training view rather than the GenAI traces overview.

Lineage is derived from content, not carried by a file (docs/ARCHITECTURE.md, "Lineage"): a run
tags the SHA-256 of each file a later stage reads as ``output.<name>.sha256`` and the SHA-256 of
each file it read as ``input.<name>.sha256``, one name per file across the pipeline. A stage finds
its upstream run as the newest finished run of that stage whose ``output.<name>.sha256`` tags
equal its own inputs (an MLflow tag search) and records it as ``upstream.<stage>.run_id``. So from
a model's run one can walk back to the exact tokenizer, token shards and corpus it came from, and
no DVC dependency holds a per-execution value: a stage re-run that writes the same bytes leaves
everything downstream unchanged for ``dvc repro``. For the same reason what an execution measures
rather than computes (wall times, throughput) goes to the run and to a timing file that only the
card, the last stage, reads. The ``run.json`` each stage writes names its run for people; nothing reads it.

Every run carries the git commit (``mlflow.source.git.commit``), a dirty flag, the DVC experiment
name when ``dvc exp run`` started it (``DVC_EXP_NAME``), all of ``params.yaml`` flattened with
their digest (:func:`pipeline.executions.params_digest`), and the installed package versions
(``environment/pip-freeze.txt``).

"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import logging
import os
import subprocess
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Params
from pipeline.errors import PipelineError
from pipeline.executions import (
    HEADLINE_METRICS,
    PARAMS_DIGEST_TAG,
    PARENT_TAG,
    close_parent,
    flat_params,
    log_metrics_to,
    open_parent,
    params_digest,
)
from pipeline.io import unreachable, write_json

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "moe-pipeline"
_HEALTH_TIMEOUT_S = 5.0
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
# The kind MLflow's UI opens in its model-training view (runs, charts); unset, MLflow 3 shows the
# GenAI overview of traces. The value is the UI's ExperimentKind.CUSTOM_MODEL_DEVELOPMENT.
MODEL_TRAINING_KIND = "custom_model_development"
# What a training execution measures rather than computes: in its MLflow run and in
# metrics/train_timing.json (read by the card alone, the last stage), never in
# metrics/train.json, which holds only what the same params and seed reproduce.
TRAIN_TIMINGS = ("wall_time_s", "tokens_per_s", "mfu", "peak_flops_per_device")

# Seconds between two samples of the system metrics: a handful of points in a minute-long CPU
# run, and few enough in a long one. MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL overrides it.
SYSTEM_METRICS_INTERVAL_S = 10.0


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
    why = unreachable(f"{uri.rstrip('/')}/health", _HEALTH_TIMEOUT_S)
    if why is not None:
        raise TrackingError(
            f"MLflow tracking server {uri} is unreachable ({why}); start it, fix "
            "MLFLOW_TRACKING_URI, or unset it to record locally in mlflow.db"
        )


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


def split_timings(metrics: Mapping, timings: Collection[str]) -> tuple[dict, dict]:
    """``(computed, measured)``: ``metrics`` without the keys in ``timings``, and those keys."""
    computed = {k: v for k, v in metrics.items() if k not in timings}
    return computed, {k: v for k, v in metrics.items() if k in timings}


@dataclass
class StageRun:
    """A live MLflow run of one stage; thin wrapper so stages need not touch the client.

    ``upstream``: stage name → the run id of the upstream run found by content (absent where the
    store holds none). ``parent_id``: the run of the pipeline execution it is nested under.
    ``opened_client``: the client that started the run, used as :attr:`client` (one client per
    stage); without it one is opened for ``uri`` on first use.
    """

    run_id: str
    experiment_id: str
    uri: str
    upstream: dict[str, str] = field(default_factory=dict)
    parent_id: str | None = None
    opened_client: Any = field(default=None, repr=False, compare=False)

    @functools.cached_property
    def client(self):
        if self.opened_client is not None:
            return self.opened_client
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.uri)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log ``metrics`` to this run, and the :data:`HEADLINE_METRICS` among them to the
        parent too."""
        log_metrics_to(self.client, self.run_id, metrics, step or 0)
        headline = {k: v for k, v in metrics.items() if HEADLINE_METRICS.fullmatch(k)}
        if self.parent_id and headline:
            log_metrics_to(self.client, self.parent_id, headline, step or 0)

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, value)

    def set_outputs(self, outputs: Mapping[str, str]) -> None:
        """Tag the SHA-256 of each output a later stage reads, by its pipeline-wide name: what
        that stage's search for its upstream run matches."""
        self.set_tags({f"output.{name}.sha256": digest for name, digest in outputs.items()})

    @contextlib.contextmanager
    def system_metrics(self, interval_s: float = SYSTEM_METRICS_INTERVAL_S) -> Iterator[None]:
        """Log CPU, memory, disk, network and (with ``nvidia-ml-py`` and an NVIDIA GPU) GPU
        use as ``system/...`` metrics of this run every ``interval_s`` seconds while the block
        runs, through MLflow's system metrics monitor (a background thread; the samples of the
        last, unfinished interval are not logged)."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            self.run_id, sampling_interval=interval_s, tracking_uri=self.uri
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()


def artifact_location(uri: str) -> str | None:
    """Where a new experiment of a local (sqlite) store keeps its artifacts: ``mlruns/`` in the
    project root. MLflow's default, ``./mlruns``, is resolved against the working directory when
    the experiment is created, which for a first ``dvc exp run --temp`` is a temporary copy that
    DVC deletes, registered models and all. A server (``http://``) decides for itself: None."""
    return (repo_root() / "mlruns").as_uri() if uri.startswith("sqlite:") else None


def use_experiment(client, name: str) -> str:
    """The id of experiment ``name``, created if missing (:func:`artifact_location`), marked as
    model training (an experiment created before the pipeline set the kind is marked on first
    use)."""
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(name, artifact_location(client.tracking_uri))
    )
    if not experiment or experiment.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    return experiment_id


def find_run(client, experiment_id: str, stage: str, outputs: Mapping[str, str]) -> str | None:
    """The newest finished run of ``stage`` whose ``output.<name>.sha256`` tags equal
    ``outputs`` (name → SHA-256): the run that wrote these bytes, or None."""
    clauses = [f"tags.`pipeline.stage` = '{stage}'", "attributes.status = 'FINISHED'"]
    clauses += [f"tags.`output.{name}.sha256` = '{digest}'" for name, digest in outputs.items()]
    found = client.search_runs(
        [experiment_id],
        " and ".join(clauses),
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    return found[0].info.run_id if found else None


def _upstream_runs(
    client, experiment_id: str, inputs: Mapping[str, str], upstream: Mapping[str, Collection[str]]
) -> dict[str, str]:
    found = {}
    for stage, names in upstream.items():
        run_id = find_run(client, experiment_id, stage, {n: inputs[n] for n in names})
        if run_id is None:  # e.g. outputs pulled from a DVC remote into a fresh store
            log.warning(
                "no finished %s run in this MLflow experiment wrote %s: lineage tag "
                "upstream.%s.run_id left out",
                stage,
                ", ".join(sorted(names)),
                stage,
            )
        else:
            found[stage] = run_id
    return found


def _start(
    stage: str,
    params: Params,
    inputs: Mapping[str, str],
    upstream: Mapping[str, Collection[str]],
    tags: dict[str, str],
) -> StageRun:
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    check_reachable(uri)
    client = MlflowClient(uri)
    experiment_id = use_experiment(client, experiment_name())
    found = _upstream_runs(client, experiment_id, inputs, upstream)
    tags.update({f"upstream.{name}.run_id": run_id for name, run_id in found.items()})
    parent_id = open_parent(client, experiment_id, params, tags)
    exp_name = os.environ.get("DVC_EXP_NAME")
    run_name = f"{stage}-{exp_name}" if exp_name else stage
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, PARENT_TAG: parent_id})
    flat = flat_params(params)
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in sorted(flat.items())])
    client.set_tag(parent_id, f"stage.{stage}.run_id", run.info.run_id)
    return StageRun(run.info.run_id, experiment_id, uri, found, parent_id, opened_client=client)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Params,
    inputs: Mapping[str, str],
    upstream: Mapping[str, Collection[str]],
    run_file: Path,
) -> Iterator[StageRun]:
    """Track one stage execution, nested under the run of the pipeline execution
    (:mod:`pipeline.executions`); write ``run_file`` on success, mark the run FAILED otherwise.

    ``inputs`` maps each input's pipeline-wide name to its SHA-256 (tagged
    ``input.<name>.sha256``); ``upstream`` maps an upstream stage to the names of the inputs it
    wrote, by which its run is found (:func:`find_run`) and tagged ``upstream.<stage>.run_id``.
    """
    unknown = {n for names in upstream.values() for n in names} - set(inputs)
    if unknown:
        raise ValueError(f"upstream outputs {sorted(unknown)} are not among the inputs")
    tags = {"pipeline.stage": stage, PARAMS_DIGEST_TAG: params_digest(params), **git_state()}
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp_name"] = exp
    tags.update({f"input.{name}.sha256": digest for name, digest in inputs.items()})
    try:
        run = _start(stage, params, inputs, upstream, tags)
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
        close_parent(run.client, run.experiment_id, run.run_id, run.parent_id, status)
    write_json(
        run_file,
        {
            "run_id": run.run_id,
            "parent_run_id": run.parent_id,
            "experiment_id": run.experiment_id,
            "stage": stage,
            "upstream": run.upstream,
        },
    )
