"""DVC stage ``evaluate``: score the trained model.

``python -m stages.evaluate`` reads ``models/`` (weights, config, run id), ``data/tokenizer``,
``data/tokens/{validation,test}.bin``, ``data/benchmarks/*.jsonl`` and
``data/prepared/word_categories.json``, and writes
``metrics/eval.json`` (stable flat keys for ``dvc metrics diff``), ``metrics/generations.json``
and ``plots/eval/`` (routing heatmaps and their data). The scores go to a new MLflow run of its
own (lineage: the train, tokenize and prepare runs) and, as ``eval/...`` metrics, into the train
run too, so the MLflow UI lists each model beside its scores.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from tokenizers import Tokenizer

from evaluation.generation import generations_markdown, sample_generations
from evaluation.harness import run_harness
from evaluation.hf_lm import load_hf_lm
from evaluation.lm_adapter import NativeLM
from evaluation.perplexity import perplexity
from evaluation.routing import analyse_routing
from evaluation.token_bytes import token_byte_lengths, token_bytes
from pipeline.config import EvaluateConfig, Params, load_params
from pipeline.data.shards import open_tokens, read_header
from pipeline.data.word_categories import read_word_categories
from pipeline.errors import PipelineError
from pipeline.io import read_json, sha256_file, write_json, write_text
from pipeline.model import MoETransformer
from pipeline.model_io import load_model
from pipeline.paths import Paths
from pipeline.tracking import stage_run, tracking_uri
from stages.common import require, run_main

log = logging.getLogger("stages.evaluate")

HEADLINE_SUFFIXES = ("/acc", "/acc_norm", "/ppl", "/bits_per_byte")


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def harness_model(params: Params, paths: Paths, lm: NativeLM, device: torch.device):
    """The lm-eval model: the native adapter, or the Hugging Face export through ``HFLM``."""
    if params.evaluate.model == "native":
        return lm
    return load_hf_lm(paths.hf_dir, params.evaluate.batch_size, device)


@dataclass
class Loaded:
    """What every part of the evaluation reads: the model (its config is ``model.cfg``, the one
    it was trained with) and the tokenizer."""

    model: MoETransformer
    tokenizer: Tokenizer
    device: torch.device

    @property
    def window(self) -> int:
        return self.model.cfg.max_seq_len


def load(paths: Paths) -> Loaded:
    device = pick_device()
    model = load_model(paths.model_files, device)
    cfg = model.cfg
    tokenizer = Tokenizer.from_file(str(paths.tokenizer_file))
    if tokenizer.get_vocab_size() != model.vocab_size:
        raise PipelineError(
            f"{paths.tokenizer_dir}: vocabulary of {tokenizer.get_vocab_size()} tokens, but the "
            f"model was trained with {model.vocab_size} (re-run train after tokenize)"
        )
    counts = model.num_params()
    log.info(
        "evaluating %s: %d layers, %d experts (%s router), %.2fM params (%.2fM active) on %s",
        paths.model_files.weights,
        cfg.n_layers,
        cfg.moe.num_experts,
        cfg.moe.router,
        counts["total"] / 1e6,
        counts["active"] / 1e6,
        device,
    )
    return Loaded(model, tokenizer, device)


def perplexities(ev: Loaded, paths: Paths, cfg: EvaluateConfig) -> dict[str, float]:
    lengths = token_byte_lengths(ev.tokenizer)
    metrics = {}
    for split in ("validation", "test"):
        tokens, _ = open_tokens(paths.tokens(split))
        result = perplexity(
            lambda idx: ev.model(idx).logits,
            tokens,
            lengths,
            ev.window,
            cfg.perplexity_max_tokens,
            cfg.batch_size,
            ev.device,
            desc=f"perplexity {split}",
        )
        metrics.update({f"perplexity/{split}/{k}": v for k, v in result.items()})
    return metrics


def routing(ev: Loaded, paths: Paths, cfg: EvaluateConfig) -> dict[str, float]:
    tokens, _ = open_tokens(paths.tokens("test"))
    report = analyse_routing(
        ev.model,
        tokens,
        token_bytes(ev.tokenizer),
        read_word_categories(paths.word_categories),
        ev.window,
        cfg.routing_max_tokens,
        cfg.batch_size,
        ev.device,
    )
    report.write(paths.eval_plots_dir)
    return report.metrics()


def run(params: Params, paths: Paths) -> dict[str, float]:
    """Evaluate; write ``metrics/eval.json``, the generations and the plots; return the metrics."""
    cfg = params.evaluate
    started = time.perf_counter()
    ev = load(paths)
    eot_id = read_header(paths.tokens("test")).eot_id
    lm = NativeLM(ev.model, ev.tokenizer, eot_id, ev.window, cfg.batch_size, params.seed)
    evaluator = harness_model(params, paths, lm, ev.device)  # before the long work: fail early

    metrics = perplexities(ev, paths, cfg)
    metrics.update(routing(ev, paths, cfg))
    samples = sample_generations(lm, cfg.generation, params.seed)
    write_json(paths.eval_generations, samples)
    write_text(
        paths.eval_plots_dir / "generations.md", generations_markdown(samples, cfg.generation)
    )
    metrics.update(
        run_harness(
            evaluator,
            list(cfg.tasks),
            list(cfg.extra_tasks),
            paths.benchmarks_dir,
            cfg.limit,
            params.seed,
        )
    )
    metrics["time/total_s"] = time.perf_counter() - started
    write_json(paths.eval_metrics, metrics)
    log.info("evaluated in %.1f s: %s", metrics["time/total_s"], headline(metrics))
    return metrics


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The scores that go into the train run, prefixed ``eval/``."""
    return {
        f"eval/{key}": value
        for key, value in metrics.items()
        if key.endswith(HEADLINE_SUFFIXES) and not key.startswith("routing/")
    }


def log_into_model_run(run_id: str, scores: dict[str, float]) -> None:
    """Add the eval scores to the train run; a store that lacks it (a fresh ``mlflow.db``
    beside a model pulled from a DVC remote) gets a warning, not a failed evaluation."""
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    try:
        MlflowClient(tracking_uri()).log_batch(
            run_id, metrics=[Metric(k, float(v), now, 0) for k, v in scores.items()]
        )
    except MlflowException as exc:
        log.warning("could not add eval scores to the train run %s: %s", run_id, exc)


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = {
        "model": sha256_file(require(paths.model_files.weights, "train")),
        "validation_tokens": read_header(paths.tokens("validation")).sha256,
        "test_tokens": read_header(paths.tokens("test")).sha256,
        "word_categories": sha256_file(require(paths.word_categories, "prepare")),
        **{
            f"benchmark.{task}": sha256_file(require(paths.benchmark(task), "prepare"))
            for task in params.evaluate.tasks
        },
    }
    upstream = {
        "train": require(paths.train_run, "train"),
        "tokenize": require(paths.tokenize_run, "tokenize"),
        "prepare": require(paths.prepare_run, "prepare"),  # the benchmark items
    }
    with stage_run("evaluate", params, inputs, upstream, paths.eval_run) as tracked:
        metrics = run(params, paths)
        tracked.log_metrics(metrics)
        for png in sorted(paths.eval_plots_dir.rglob("*.png")):
            folder = png.parent.relative_to(paths.eval_plots_dir).as_posix()
            tracked.log_artifact(png, "plots" if folder == "." else f"plots/{folder}")
        for artifact in (paths.eval_metrics, paths.eval_generations):
            tracked.log_artifact(artifact)
        tracked.log_artifact(paths.eval_plots_dir / "generations.md")
        log_into_model_run(read_json(paths.train_run)["run_id"], headline(metrics))


if __name__ == "__main__":
    run_main("evaluate", main)
