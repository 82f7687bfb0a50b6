"""Every artifact a stage reads from another stage is checked against the digest its writer
recorded, before any work: weights, tokenizer, prepared shards, token shards, benchmark items.

The token shards' and prepared shards' checks are tested with their formats
(tests/data/test_shards.py, tests/data/test_tokenizer.py); here: the weights and the tokenizer
through ``python -m stages.export``, which must exit 2 with the file and the fix and write nothing,
the weights through evaluate's loader, and the benchmark items through their digest record.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from pipeline.config import ModelConfig, TokenizeConfig
from pipeline.data.digests import record_digests, verify_digests
from pipeline.data.synthetic import generate_documents
from pipeline.data.tokenizer import save_tokenizer, train_tokenizer
from pipeline.errors import PipelineError
from pipeline.model import MoETransformer
from pipeline.model_io import ModelLoadError, load_model, model_identity, save_model
from pipeline.paths import Paths

TOKENIZE = TokenizeConfig(vocab_size=300)
TINY = {
    "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1, "dense_hidden": 64,
    "max_seq_len": 32, "moe": {"num_experts": 4, "top_k": 2, "expert_hidden": 32},
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Paths:
    """What export reads, as train and tokenize write it: weights + spec, tokenizer."""
    paths = Paths(root=tmp_path_factory.mktemp("trained"))
    save_tokenizer(
        train_tokenizer(generate_documents(3, 0.02, 0.3), TOKENIZE), TOKENIZE, paths.tokenizer_dir
    )
    vocab = json.loads(paths.tokenizer_file.read_text())["model"]["vocab"]
    torch.manual_seed(0)
    model = MoETransformer(ModelConfig.model_validate(TINY), len(vocab))
    save_model(model, model_identity(model.cfg, model.vocab_size), paths.model_files)
    (paths.root / "params.yaml").write_text(yaml.safe_dump({}))
    return paths


@pytest.fixture
def workspace(trained, tmp_path) -> Paths:
    shutil.copytree(trained.root, tmp_path / "ws")
    return Paths(root=tmp_path / "ws")


def damage(path, count: int = 64) -> None:
    """Overwrite ``count`` bytes in the middle of ``path`` (its size stays)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + count] = bytes(b ^ 0x5A for b in data[middle : middle + count])
    path.write_bytes(bytes(data))


def export(paths: Paths, stage_env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "stages.export"],
        cwd=paths.root,
        env=stage_env,
        capture_output=True,
        text=True,
    )


def test_export_of_intact_inputs_works(workspace, stage_env):
    done = export(workspace, stage_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (workspace.hf_dir / "model.safetensors").is_file()


def test_damaged_weights_stop_export_before_any_work(workspace, stage_env):
    damage(workspace.model_files.weights)
    done = export(workspace, stage_env)
    assert done.returncode == 2
    assert "model.safetensors: SHA-256" in done.stderr and "re-run the train stage" in done.stderr
    assert "Traceback" not in done.stderr
    assert not workspace.hf_dir.exists()


def test_damaged_weights_stop_evaluation_loading(workspace):
    """evaluate and card load the model through load_model: the same check."""
    load_model(workspace.model_files)
    damage(workspace.model_files.weights)
    with pytest.raises(ModelLoadError, match=r"differs from the .* that training recorded"):
        load_model(workspace.model_files)


def test_weights_without_a_recorded_digest_are_refused(workspace):
    config = json.loads(workspace.model_files.config.read_text())
    del config["weights_sha256"]
    workspace.model_files.config.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"records no weights_sha256.*re-run the train stage"):
        load_model(workspace.model_files)


def test_damaged_tokenizer_stops_export_before_any_work(workspace, stage_env):
    damage(workspace.tokenizer_file)
    done = export(workspace, stage_env)
    assert done.returncode == 2
    assert "tokenizer.json: SHA-256 differs" in done.stderr
    assert "re-run the tokenize stage" in done.stderr
    assert not workspace.hf_dir.exists()


def test_benchmark_items_are_checked_against_prepares_record(tmp_path):
    items = tmp_path / "benchmarks"
    (items / "test").mkdir(parents=True)
    (items / "test" / "agreement.jsonl").write_text('{"answer": 0}\n')
    record_digests(items)
    verify_digests(items, "prepare")
    (items / "test" / "agreement.jsonl").write_text('{"answer": 1}\n')
    with pytest.raises(
        PipelineError, match=r"agreement.jsonl: SHA-256 differs.*re-run the prepare"
    ):
        verify_digests(items, "prepare")
    (items / "test" / "agreement.jsonl").unlink()
    with pytest.raises(PipelineError, match=r"agreement.jsonl: missing"):
        verify_digests(items, "prepare")
