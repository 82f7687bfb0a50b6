"""One MLflow parent run per pipeline execution, the stage runs nested under it.

The stage runs of one pipeline execution (a ``dvc repro`` or ``dvc exp run``) are
nested under one parent run, one row per variant in the runs table. DVC runs each stage as its
own process and exposes no execution id, so the parent is found by an *execution key*
(:func:`execution_key`): under DVC, the DVC process that runs the stage commands (the nearest
ancestor without this stage's ``DVC_STAGE``, which DVC sets for each command), by host, pid and
start time: one per ``dvc repro``, ``dvc exp run`` (``--temp`` too) and queued experiment (each is
run by its own ``dvc exp exec-run``). A stage run by hand has no DVC process above it; its key is
the digest of the params, the git commit and ``DVC_EXP_NAME``, so hand-run stages of one variant
share a parent. A stage joins the newest parent tagged ``pipeline.execution`` with its key,
whatever its status, or creates it. The parent is RUNNING while one of its stages runs and takes
the status of the last stage that ended: FINISHED after an execution that succeeded, whichever
stage DVC ran last (``card`` is skipped when nothing upstream changed), FAILED where a stage
failed (DVC stops there; the re-run is another execution, with a parent of its own).

The parent is named after ``DVC_EXP_NAME`` or else the params that differ from the defaults
(:func:`variant_name`), carries :data:`HEADLINE_PARAMS` and every metric a stage logs that
matches :data:`HEADLINE_METRICS`, and tags ``stage.<stage>.run_id`` for every stage of the
pipeline: its own stage runs, and for the stages DVC skipped the runs that made the files in
use, found by content (:func:`link_stages`) and their headline metrics copied, never re-run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Collection, Mapping
from typing import Any

from pipeline.config import Params, flatten_keys

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"  # what nests a run under another in MLflow's UI
NOTE_TAG = "mlflow.note.content"  # the run's description in the UI
EXECUTION_TAG = "pipeline.execution"  # on a parent run only: its execution key
PARAMS_DIGEST_TAG = "pipeline.params_digest"
# What the runs table compares variants by: the model's shape, its routing and balance, the
# training length (keys of params.yaml, as every stage run logs them).
HEADLINE_PARAMS = (
    "tokenize.vocab_size",
    "train.model.d_model",
    "train.model.n_layers",
    "train.model.moe.num_experts",
    "train.model.moe.top_k",
    "train.model.moe.expert_hidden",
    "train.model.moe.num_shared_experts",
    "train.model.moe.router",
    "train.model.moe.capacity_factor",
    "train.model.moe.balance",
    "train.model.moe.aux_loss_weight",
    "train.model.moe.bias_update_rate",
    "train.max_steps",
)
# The metrics a stage logs that also go on the parent: the validation loss (train), bits per
# byte (evaluate's perplexity) and per generated task the test accuracy and its margin over the
# strongest trivial baseline, in stderr (evaluate; keys of metrics/{train,eval}.json).
HEADLINE_METRICS = re.compile(
    r"val_loss|perplexity/(validation|test)/bits_per_byte|[^/]+/test/(acc|above_baseline_stderr)"
)
# Longer names are cut at a difference, with how many were left out; the parent's description
# lists them all.
RUN_NAME_LIMIT = 100


def flat_params(params: Params) -> dict[str, Any]:
    """``params`` as MLflow records them: ``{"train.model.d_model": 256, ...}``."""
    return flatten_keys(params.model_dump(mode="json"))


def params_digest(params: Params) -> str:
    """A short digest of every param: equal digests, equal ``params.yaml`` content."""
    text = json.dumps(params.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dvc_process():
    """The DVC process running this stage command (a ``psutil.Process``), or None outside DVC.

    DVC sets ``DVC_STAGE`` in the environment of each command it runs (``dvc/stage/run.py``),
    so the nearest ancestor whose environment lacks this value is DVC itself (between them there
    may be the shell DVC starts the command with)."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return None
    import psutil

    try:
        for ancestor in psutil.Process().parents():
            if ancestor.environ().get("DVC_STAGE") != stage:
                return ancestor
    except psutil.Error as exc:  # e.g. another user's process, or an OS that hides environments
        log.warning("cannot find the DVC process above this stage (%s): keyed by params", exc)
    return None


def execution_key(digest: str, git: Mapping[str, str]) -> str:
    """What the stages of one pipeline execution share (this module's docstring):
    ``dvc:<host>:<pid>:<start ms>`` of the DVC process running them, or by hand
    ``params:<digest>`` of ``digest`` (the params'), the commit and ``DVC_EXP_NAME``."""
    dvc = dvc_process()
    if dvc is not None:
        return f"dvc:{socket.gethostname()}:{dvc.pid}:{round(dvc.create_time() * 1000)}"
    what = [digest, git.get("mlflow.source.git.commit", ""), os.environ.get("DVC_EXP_NAME", "")]
    return "params:" + hashlib.sha256("\n".join(what).encode()).hexdigest()[:16]


def differing_params(params: Params) -> dict[str, Any]:
    """The params that differ from the defaults (``Params()``), by the shortest trailing part of
    their key that names one param (``num_experts``, ``moe.top_k``, ``generation.top_k``): the
    :data:`HEADLINE_PARAMS` first, in their order, then the others by key."""
    defaults, flat = flat_params(Params()), flat_params(params)
    order = {key: rank for rank, key in enumerate(HEADLINE_PARAMS)}
    changed = sorted(
        (key for key, value in flat.items() if defaults.get(key) != value),
        key=lambda key: (order.get(key, len(order)), key),
    )
    return {_short_key(key, flat): flat[key] for key in changed}


def _short_key(key: str, keys: Collection[str]) -> str:
    parts = key.split(".")
    for size in range(1, len(parts)):
        suffix = ".".join(parts[-size:])
        if sum(k == suffix or k.endswith(f".{suffix}") for k in keys) == 1:
            return suffix
    return key


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_show(item) for item in value) + "]"
    return value if isinstance(value, str) else json.dumps(value)


def variant_name(differing: Mapping[str, Any]) -> str:
    """The parent run's name: ``DVC_EXP_NAME``, else ``differing``, the params that differ from
    the defaults (:func:`differing_params`: ``num_experts=2,router=sigmoid_bias``; ``defaults``
    when none), cut to :data:`RUN_NAME_LIMIT` characters at a difference with ``,+<n>`` for the
    ones left out."""
    if exp := os.environ.get("DVC_EXP_NAME"):
        return exp
    parts = [f"{key}={_show(value)}" for key, value in differing.items()]
    if not parts:
        return "defaults"
    kept, name = len(parts), ",".join(parts)
    while len(name) > RUN_NAME_LIMIT and kept > 1:
        kept -= 1
        name = f"{','.join(parts[:kept])},+{len(parts) - kept}"
    return name[:RUN_NAME_LIMIT]


def log_metrics_to(client, run_id: str, metrics: Mapping[str, float], step: int) -> None:
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
    client.log_batch(run_id, metrics=batch)


def open_parent(client, experiment_id: str, params: Params, tags: Mapping[str, str]) -> str:
    """The id of the parent run of this execution, now RUNNING: the newest run tagged with its
    execution key (:func:`execution_key`), or a new one named :func:`variant_name` with the
    :data:`HEADLINE_PARAMS`. ``tags``: the stage run's, of which it takes the commit, the dirty
    flag, the params digest and the DVC experiment name."""
    from mlflow.entities import Param

    digest = tags[PARAMS_DIGEST_TAG]
    key = execution_key(digest, tags)
    found = client.search_runs(
        [experiment_id],
        f"tags.`{EXECUTION_TAG}` = '{key}'",
        max_results=1,
        order_by=["attributes.start_time DESC"],
    )
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    shared = ("mlflow.source.git.commit", "git.dirty", "dvc.exp_name", PARAMS_DIGEST_TAG)
    differing = differing_params(params)
    listed = ", ".join(f"{k}={_show(v)}" for k, v in differing.items())
    note = f"Params that differ from the defaults: {listed or 'none'}."
    parent_tags = {EXECUTION_TAG: key, NOTE_TAG: note}
    parent_tags.update({name: tags[name] for name in shared if name in tags})
    run = client.create_run(experiment_id, run_name=variant_name(differing), tags=parent_tags)
    flat = flat_params(params)
    headline = [Param(name, str(flat[name])) for name in HEADLINE_PARAMS]
    client.log_batch(run.info.run_id, params=headline)
    return run.info.run_id


def _tagged(run, kind: str) -> dict[str, str]:
    """``{name: sha256}`` of a run's ``<kind>.<name>.sha256`` tags (``kind``: input, output)."""
    pattern = re.compile(rf"{kind}\.(.+)\.sha256")
    return {m[1]: v for k, v in run.data.tags.items() if (m := pattern.fullmatch(k))}


def link_stages(client, experiment_id: str, run) -> dict[str, Any]:
    """``{stage: run}``: ``run`` (a finished stage run) and the runs that made the rest of the
    files in use, found by content: upstream, the runs its ``upstream.<stage>.run_id`` tags lead
    to, transitively; downstream (the stages DVC skipped after it), among the finished runs with
    the same params, the newest run of each stage whose inputs equal the outputs of the runs
    linked so far wherever they name the same file. The nearest run of a stage wins (a train
    run's own upstream train run, the dense model it was upcycled from, is not linked)."""
    from mlflow.exceptions import MlflowException

    linked = {run.data.tags["pipeline.stage"]: run}
    frontier = [run]
    upstream_tag = re.compile(r"upstream\.(.+)\.run_id")
    while frontier:
        for key, run_id in frontier.pop(0).data.tags.items():
            match = upstream_tag.fullmatch(key)
            if not match or match[1] in linked:
                continue
            try:
                found = client.get_run(run_id)
            except MlflowException:  # deleted since: the lineage tag leads nowhere
                continue
            linked[match[1]] = found
            frontier.append(found)
    same_params = client.search_runs(
        [experiment_id],
        f"tags.`{PARAMS_DIGEST_TAG}` = '{run.data.tags[PARAMS_DIGEST_TAG]}' "
        "and attributes.status = 'FINISHED'",
        max_results=1000,
        order_by=["attributes.start_time DESC"],
    )
    grown = True
    while grown:
        grown = False
        outputs = {name: sha for r in linked.values() for name, sha in _tagged(r, "output").items()}
        for candidate in same_params:
            stage = candidate.data.tags.get("pipeline.stage")
            inputs = _tagged(candidate, "input")
            shared = inputs.keys() & outputs.keys()
            if stage in linked or not shared or any(inputs[n] != outputs[n] for n in shared):
                continue
            linked[stage] = candidate
            grown = True
    return linked


def close_parent(client, experiment_id: str, run_id: str, parent_id: str, status: str) -> None:
    """End the parent ``parent_id``'s current stretch with the status of its stage run
    ``run_id``; after a finished stage,
    first tag ``stage.<stage>.run_id`` for every stage :func:`link_stages` finds and copy the
    headline metrics of those not run in this execution (those DVC skipped) onto the parent."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    try:
        if status == "FINISHED":
            linked = link_stages(client, experiment_id, client.get_run(run_id))
            links = [RunTag(f"stage.{stage}.run_id", r.info.run_id) for stage, r in linked.items()]
            client.log_batch(parent_id, tags=links)
            on_parent = client.get_run(parent_id).data.metrics
            skipped = [r for r in linked.values() if r.data.tags.get(PARENT_TAG) != parent_id]
            copied = {
                key: value
                for other in skipped
                for key, value in other.data.metrics.items()
                if HEADLINE_METRICS.fullmatch(key) and on_parent.get(key) != value
            }
            if copied:  # each stage's end links again: only what is new to the parent
                log_metrics_to(client, parent_id, copied, 0)
    except MlflowException as exc:  # lineage never stops a stage
        log.warning("could not link the stages of parent run %s: %s", parent_id, exc)
    client.set_terminated(parent_id, status)
