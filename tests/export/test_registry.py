"""The export in MLflow's model registry: logged from the export run as a ``transformers`` model,
registered as a new version per export with tags leading back to the runs and the commit, the
card as its description, and the registered version loads back offline and generates what the
exported directory generates."""

from __future__ import annotations

import subprocess

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline import tracking
from pipeline.config import Params
from pipeline.export.hf_dir import WEIGHTS, write_export
from pipeline.export.registry import describe_version, register_export, version_tags
from pipeline.io import sha256_file

from .conftest import tiny_config, tiny_model

NAME = "tiny-moe"


@pytest.fixture
def store(mlflow_uri, tmp_path, monkeypatch) -> MlflowClient:
    """The test's sqlite store, its experiment's artifacts under ``tmp_path``, run from a git
    checkout with one commit (what the ``git.commit`` tag must name)."""
    client = MlflowClient(mlflow_uri)
    client.create_experiment("test", artifact_location=(tmp_path / "artifacts").as_uri())
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "init"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True)
    return client


def export_and_register(tmp_path, tokenizer_dir, vocab_size, variant: str, **overrides):
    """Export a tiny model into ``tmp_path/<variant>`` and register it from an export run that
    finds a stand-in train run by the trained weights' digest, as the stage does."""
    out = tmp_path / variant
    write_export(tiny_model(tiny_config(**overrides), vocab_size), tokenizer_dir, out, "float32")
    trained = {"model": f"{variant}-trained-weights-digest"}
    with tracking.stage_run("train", Params(), {}, {}, tmp_path / f"{variant}-train.json") as train:
        train.set_outputs(trained)
    upstream = {"train": ("model",)}
    run_file = tmp_path / f"{variant}-export.json"
    with tracking.stage_run("export", Params(), trained, upstream, run_file) as run:
        version = register_export(run, out, NAME, sha256_file(out / WEIGHTS))
    assert run.upstream == {"train": train.run_id}
    return out, run, version


def greedy(model, tokenizer, new_tokens: int) -> list[int]:
    prompt = tokenizer("Once upon a time", return_tensors="pt").input_ids  # (1, P)
    with torch.no_grad():
        ids = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False)  # fmt: skip
    return ids[0, prompt.shape[1] :].tolist()


def test_registered_versions_load_back_and_generate_like_the_export(
    store, mlflow_uri, tmp_path, tokenizer_dir, vocab_size
):
    out, run, version = export_and_register(tmp_path, tokenizer_dir, vocab_size, "first")
    second, second_run, second_version = export_and_register(
        tmp_path, tokenizer_dir, vocab_size, "second", tie_embeddings=False
    )
    assert (version, second_version) == ("1", "2")
    # The export run was MLflow's active run only while logging; the test's store is still the one.
    assert mlflow.active_run() is None and mlflow.get_tracking_uri() == mlflow_uri
    assert sorted(int(v.version) for v in store.search_model_versions(f"name = '{NAME}'")) == [1, 2]

    registered = store.get_model_version(NAME, "1")
    export_run = store.get_run(run.run_id)
    assert registered.run_id == run.run_id and registered.status == "READY"
    assert registered.tags == {
        "export.run_id": run.run_id,
        "train.run_id": run.upstream["train"],
        "git.commit": export_run.data.tags["mlflow.source.git.commit"],
        "git.dirty": "false",
        "weights.sha256": sha256_file(out / WEIGHTS),
    }
    assert store.get_model_version(NAME, "2").tags["weights.sha256"] == sha256_file(
        second / WEIGHTS
    )
    # The run's Model column: the logged model is an output of the export run.
    [logged] = export_run.outputs.model_outputs
    assert registered.source == f"models:/{logged.model_id}"

    card = "---\nlicense: apache-2.0\n---\n# tiny-moe\n\nA card, **in markdown**.\n"
    with tracking.stage_run("card", Params(), {}, {}, tmp_path / "card.json") as card_run:
        described = describe_version(card_run, NAME, sha256_file(out / WEIGHTS), card)
    assert described == "1"
    assert store.get_model_version(NAME, "1").description == card
    assert not store.get_model_version(NAME, "2").description
    assert describe_version(card_run, NAME, "0" * 64, card) is None  # no version of these bytes
    assert describe_version(card_run, "never-registered", sha256_file(out / WEIGHTS), card) is None

    pipe = mlflow.transformers.load_model(f"models:/{NAME}/1")
    assert type(pipe.model).__name__ == "Qwen3MoeForCausalLM"
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    new = 8  # stays inside the trained context (max_seq_len 24) after the prompt
    expected = greedy(exported, tokenizer, new)
    assert greedy(pipe.model, pipe.tokenizer, new) == expected
    text = pipe("Once upon a time", max_new_tokens=new, min_new_tokens=new, do_sample=False,
                return_full_text=False)[0]["generated_text"]  # fmt: skip
    assert text == tokenizer.decode(expected)


def test_outside_a_git_checkout_the_version_has_no_commit_tags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # not in a git checkout: no commit to name
    run = tracking.StageRun("export-id", "1", "sqlite:///unused.db", {"train": "train-id"})
    assert version_tags(run, "ab" * 32) == {
        "export.run_id": "export-id",
        "train.run_id": "train-id",
        "weights.sha256": "ab" * 32,
    }
