"""The ``card`` stage: a Hugging Face model card whose metadata parses back with
``huggingface_hub`` to exactly the numbers in ``metrics/eval.json``, written into the export so the
directory is a complete repository, logged to MLflow; and the DVC wiring of export and card."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import ModelCard
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM

from evaluation.card import harness_scores, initial_weights, perplexity_scores
from pipeline.config import parse_params
from pipeline.export.hf_dir import FILES, verify_export, write_export
from pipeline.io import read_json, sha256_file, write_json
from pipeline.model_io import model_identity, save_model
from pipeline.paths import Paths
from stages import card, evaluate

from .test_stage import PARAMS, stand_in_run

REPO = Path(__file__).resolve().parents[2]
SECTIONS = (
    "## Model details",
    "## Intended use",
    "## Out-of-scope use",
    "## Training data",
    "## Training procedure",
    "## Evaluation",
    "## Routing analysis",
    "## Limitations and risks",
    "## Reproducibility",
)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, data_root, model):
    """A repository after train (stand-in outputs), export and a real evaluate run."""
    root = tmp_path_factory.mktemp("card") / "repo"
    shutil.copytree(data_root, root)
    paths = Paths(root=root)
    save_model(model, model_identity(model.cfg, model.vocab_size), paths.model_files)
    write_export(model, paths.tokenizer_dir, paths.hf_dir, "float32")
    (root / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    evaluate.run(parse_params(PARAMS), paths)
    counts = model.num_params()  # the timings are in their own file (TIMINGS), not this one
    write_json(paths.train_timing, TIMINGS)
    write_json(paths.train_metrics, {
        "params_total": counts["total"], "params_active": counts["active"], "steps": 7,
        "train_loss": 4.2, "val_loss": 4.4, "peak_flops_source": "measured",
    })  # fmt: skip
    write_json(paths.prepare_stats, {"splits": {"train": {"documents": 9, "bytes": 999,
                                                          "sha256": "ab" * 32}}})  # fmt: skip
    write_json(paths.tokenize_metrics, {"train": {"tokens": 321}})
    write_json(root / "dvc.lock", {"schema": "2.0", "stages": {
        "train": {"outs": [{"path": "models/model.safetensors", "md5": "f" * 32},
                           {"path": "models/run.json", "md5": "e" * 32},
                           {"path": "metrics/train_timing.json", "md5": "d" * 32}]}}})  # fmt: skip
    return root


TIMINGS = {"wall_time_s": 12.5, "tokens_per_s": 3456.0, "mfu": 0.0123, "peak_flops_per_device": 1.0}


def test_card_metadata_parses_back_to_the_eval_numbers(evaluated, mlflow_uri, monkeypatch):
    paths = Paths(root=evaluated)  # no prepare or tokenize runs: the card names the others
    upstream = {
        "train": stand_in_run(
            mlflow_uri, "train", {"train_metrics": sha256_file(paths.train_metrics)}, TIMINGS
        ),
        "export": stand_in_run(
            mlflow_uri, "export", {name: sha256_file(paths.hf_dir / name) for name in FILES}
        ),
        "evaluate": stand_in_run(
            mlflow_uri, "evaluate", {"eval_metrics": sha256_file(paths.eval_metrics)}
        ),
    }
    monkeypatch.chdir(evaluated)
    card.main()

    repo = paths.hf_dir
    parsed = ModelCard.load(repo / "README.md")
    data = parsed.data
    assert data.license == "apache-2.0" and data.language == ["en"]
    assert "moe" in data.tags and data.library_name == "transformers"
    metrics = read_json(paths.eval_metrics)
    by_key = {r.metric_name: r.metric_value for r in data.eval_results}
    expected = {  # the Hub's model-index gets the test scores; dev chose the defaults
        f"{s.key}/{s.metric}": s.value for s in harness_scores(metrics) if s.item_set != "dev"
    }
    expected |= {f"perplexity/{sp}/{m}": v for sp, m, v in perplexity_scores(metrics)}
    assert any(k.endswith("/acc") for k in expected) and any("bits_per_byte" in k for k in expected)
    assert by_key == {k: metrics[k] for k in expected} and len(data.eval_results) == len(expected)
    # Pinned, not only derived with the card's own helper: each task's test accuracy, no dev item.
    for task in ("agreement", "entity_cloze", "counting"):
        assert by_key[f"{task}/test/acc"] == metrics[f"{task}/test/acc"]
    assert not [k for k in by_key if "/dev/" in k or "/tier/" in k]

    text = parsed.text
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions)
    stderr = metrics["agreement/test/acc_stderr"]
    assert f"{stderr:.4g}" in text and f"{metrics['agreement/test/chance']:.4g}" in text
    for task in ("agreement", "entity_cloze", "counting"):
        best = metrics[f"{task}/test/baseline_best"]
        assert f"{best:.4g} (" in text  # the strongest baseline, named, beside the score
        assert re.search(rf"- {task}: (above|\*\*not\*\* above) the strongest baseline", text)
    assert "By difficulty (test items)" in text and "hand-overs 2" in text
    for image in ("plots/expert_load.png", "plots/specialisation/layer0.png"):
        assert f"]({image})" in text and (repo / image).is_file()
    card_run = read_json(repo.parent / "card_run.json")
    assert card_run["upstream"] == upstream  # the lineage is MLflow's ...
    for run_id in (*upstream.values(), card_run["run_id"]):
        assert run_id not in text  # ... not the card's: another store, the same card
    assert "`" + "f" * 32 + "`" in text  # the dvc.lock hash
    assert "e" * 32 not in text and "d" * 32 not in text  # per-execution outputs left out
    assert "3456" in text and "0.0123" in text  # tokens/s and MFU from the timing file
    assert "peak 1 FLOP/s per device (measured)" in text  # its peak, the source from the file
    assert r"`<\|endoftext\|>`" in text  # a pipe inside a table cell is escaped

    # Still a valid, loadable export, now with its card: an uploadable repository.
    verify_export(repo)
    assert AutoModelForCausalLM.from_pretrained(repo) is not None
    client = MlflowClient(mlflow_uri)
    card_run = read_json(repo.parent / "card_run.json")["run_id"]
    logged = {a.path for a in client.list_artifacts(card_run, "model_card")}
    assert "model_card/README.md" in logged and "model_card/plots" in logged


def test_card_refuses_a_damaged_export(evaluated, tmp_path):
    root = tmp_path / "repo"
    shutil.copytree(evaluated, root)
    paths = Paths(root=root)
    (paths.hf_dir / "config.json").write_text("{}")
    with pytest.raises(Exception, match=r"\['config\.json'\] differ"):
        card.run(parse_params(PARAMS), paths)


# --------------------------------------------------------------------------- dvc.yaml wiring
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _outs(stage: dict) -> list[str]:
    items = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
    return [next(iter(o)) if isinstance(o, dict) else o for o in items]


def stages_rerun_by_param(key: str) -> set[str]:
    """Stages whose params cover ``key``, plus every stage downstream of them through deps."""
    hit = {
        name
        for name, stage in STAGES.items()
        if any(key == p or key.startswith(p + ".") for p in stage.get("params", []))
    }
    changed = True
    while changed:
        outs = [o for name in hit for o in _outs(STAGES[name])]
        more = {
            name
            for name, stage in STAGES.items()
            if any(d == o or d.startswith(o + "/") for d in stage["deps"] for o in outs)
        }
        changed = not more <= hit
        hit |= more
    return hit


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("evaluate.tasks", {"evaluate", "card"}),
        ("evaluate.limit", {"evaluate", "card"}),
        ("card.model_name", {"card"}),
        ("card.export_dtype", {"export", "evaluate", "card"}),
    ],
)
def test_a_param_change_reruns_only_what_it_affects(key, expected):
    assert stages_rerun_by_param(key) == expected


def test_card_and_export_outputs_share_the_repository_directory_without_overlap():
    export_outs, card_outs = set(_outs(STAGES["export"])), set(_outs(STAGES["card"]))
    repo = "models/hf/"
    assert {o for o in export_outs if o.startswith(repo)} == {
        repo + name for name in ("config.json", "generation_config.json", "model.safetensors",
                                 "tokenizer.json", "tokenizer_config.json")
    }  # fmt: skip
    assert {repo + "README.md", repo + "plots"} <= card_outs
    assert set(STAGES["card"]["deps"]) >= {
        "metrics/eval.json",
        *export_outs - {"models/export_run.json"},
    }


def test_the_card_names_the_dense_model_an_upcycled_run_started_from():
    upcycled = parse_params(
        {"train": {"init": {"upcycle_from": "dense/models", "method": "drop", "drop_ratio": 0.25}}}
    )
    trained = {"upcycled_from_sha256": "abc123"}  # metrics/train.json of an upcycled run
    text = initial_weights(SimpleNamespace(params=upcycled, train_metrics=trained))
    assert "`dense/models`" in text and "0.25 of each expert's units" in text
    assert "weights SHA-256 `abc123`" in text and "upstream.train.run_id" in text
    scratch = SimpleNamespace(params=parse_params({}), train_metrics={})
    assert initial_weights(scratch) == "random (from scratch)"
