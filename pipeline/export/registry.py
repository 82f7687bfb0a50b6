"""The exported model in MLflow's model registry.

The ``export`` stage logs ``models/hf/`` from its own run as an MLflow model of the
``transformers`` flavor (task ``text-generation``) and registers it as a new version of
``card.model_name`` (:func:`register_export`); the ``card`` stage, which runs later, sets the model
card as that version's description (:func:`describe_version`). ``mlflow.transformers.load_model(
"models:/<name>/<version>")`` then gives a text-generation pipeline, offline.

**What is stored where.** ``models/hf/`` is DVC's (its cache and remote). The flavor is logged
from the model and tokenizer loaded from that directory: MLflow writes the model with
``save_pretrained`` into the logged model's artifacts (``model/``: config, generation config and
the weights, the same tensors under the same names, without the export manifest
:mod:`pipeline.export.hf_dir` keeps in the file's metadata), the tokenizer into
``components/tokenizer/``, and its own metadata (``MLmodel``, requirements, and a license notice
it writes when it finds no hub repository: the card, with the license, is the version's
description). So the weights are stored twice, by DVC and in the MLflow artifact store: a
registered version that loads from ``models:/...`` on its own (on a machine without this
checkout, or after ``models/hf/`` moved on to another variant) has to hold them, and at this
project's sizes (tens of MB) that is acceptable. The alternative, a ``pyfunc`` pointing at the
DVC-managed path, would store nothing but load only in this workspace, at these bytes. The
export run logs no other copy of the export's files. Logging straight from the directory
(``log_model`` given its path, a byte-for-byte copy that never loads the weights) is what we
would prefer, but MLflow 3.17 cannot do it with transformers 5: ``pipelines.check_task`` now
names the pipeline class as a string, and MLflow's ``build_flavor_config_from_local_checkpoint``
fails on ``.__name__``.

**No hub access.** MLflow looks up a model card and a license on the Hugging Face Hub under the
model's ``name_or_path``; it is the directory's absolute path, which the hub client rejects as a
repository id before making any request (MLflow logs a warning and goes on). Loading reads the
artifact's own files only.

**Lineage.** The version (and the logged model) carries ``export.run_id`` (also its source run),
``<stage>.run_id`` for each upstream run the export found by content (``train``, ``tokenize``),
``git.commit`` / ``git.dirty`` and ``weights.sha256`` (of ``models/hf/model.safetensors``, the
file DVC tracks and the export run tags as an output). The card stage finds the version by that
digest: the newest version of these weights is the one the newest export run of these bytes
registered, the same run its lineage search finds (:func:`pipeline.tracking.find_run`).

**Description size.** The card (~15 kB) is stored whole. SQLite, the default store, keeps it; a
tracking server on PostgreSQL or MySQL enforces MLflow's 5000-character description column and
refuses it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.tracking import StageRun, git_state

log = logging.getLogger(__name__)

TASK = "text-generation"
WEIGHTS_TAG = "weights.sha256"
# What loading the logged model needs (transformers brings tokenizers and safetensors); pinned to
# the versions installed, without a local build label such as torch's "+cpu", which no index has.
REQUIREMENTS = ("torch", "transformers")


def requirements() -> list[str]:
    return [f"{name}=={importlib.metadata.version(name).split('+')[0]}" for name in REQUIREMENTS]


@contextlib.contextmanager
def _active(run: StageRun) -> Iterator[None]:
    """``run`` as MLflow's active run on its store: ``log_model`` and its registration use the
    fluent API only. The process-wide tracking URI, which this project otherwise never sets, and
    ``MLFLOW_TRACKING_URI`` (which setting it overwrites) are restored afterwards. Leaving the
    block ends the run; ``stage_run`` sets its final status after the stage."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(run.uri)
    try:
        with mlflow.start_run(run_id=run.run_id):
            yield
    finally:
        mlflow.set_tracking_uri(None)  # unsets the variable too
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def version_tags(run: StageRun, weights_sha256: str) -> dict[str, str]:
    """The lineage tags of a version registered by the export run ``run``."""
    tags = {"export.run_id": run.run_id}
    tags.update({f"{stage}.run_id": run_id for stage, run_id in sorted(run.upstream.items())})
    if git := git_state():  # empty outside a git checkout
        tags.update({"git.commit": git["mlflow.source.git.commit"], "git.dirty": git["git.dirty"]})
    return {**tags, WEIGHTS_TAG: weights_sha256}


def register_export(run: StageRun, hf_dir: Path, model_name: str, weights_sha256: str) -> str:
    """Log the export in ``hf_dir`` as a ``transformers`` model of the export stage's ``run`` and
    register it as a new version of ``model_name``; return the version. ``weights_sha256``: of
    ``hf_dir``'s weights, as the export run tags them."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tags = version_tags(run, weights_sha256)
    checkpoint = str(hf_dir.resolve())  # absolute: see "No hub access"
    components = {
        "model": AutoModelForCausalLM.from_pretrained(checkpoint),
        "tokenizer": AutoTokenizer.from_pretrained(checkpoint),
    }
    with _active(run):
        info = mlflow.transformers.log_model(
            components,
            name="model",  # card.model_name may hold a ".", which a logged model's name may not
            task=TASK,
            registered_model_name=model_name,
            tags=tags,
            pip_requirements=requirements(),  # given, so MLflow does not load the model again
        )
    version = str(info.registered_model_version)
    log.info("registered %s version %s (model %s)", model_name, version, info.model_uri)
    return version


def describe_version(run: StageRun, model_name: str, weights_sha256: str, card: str) -> str | None:
    """Set ``card`` as the description of the newest version of ``model_name`` holding these
    weights, and return that version; None, with a warning, where the registry holds none
    (e.g. outputs pulled from a DVC remote into a fresh store): like lineage, this never stops
    the card stage."""
    found = run.client.search_model_versions(
        f"name = '{model_name}' and tags.`{WEIGHTS_TAG}` = '{weights_sha256}'"
    )
    if not found:
        log.warning(
            "no version of registered model %r holds weights %s: the model card is not set as "
            "a version description (run the export stage against this tracking store)",
            model_name,
            weights_sha256,
        )
        return None
    version = max(found, key=lambda v: int(v.version)).version
    run.client.update_model_version(model_name, version, description=card)
    return str(version)
