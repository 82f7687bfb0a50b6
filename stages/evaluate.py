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
from evaluation.hf_lm import load_hf_lm
from evaluation.lm_adapter import NativeLM
from evaluation.perplexity import perplexity
from evaluation.routing import RoutingWindows, analyse_routing
from evaluation.routing_domains import token_domains
from evaluation.standard_tasks import StandardTasks
from evaluation.task_scores import score_tasks
from evaluation.token_bytes import token_byte_lengths, token_bytes
from pipeline.config import EvaluateConfig, Params, load_params
from pipeline.data.benchmark_sets import ITEM_SETS
from pipeline.data.digests import verify_digests
from pipeline.data.prepared import iter_texts, read_prepared
from pipeline.data.shards import TokenSplit, open_split, read_manifest, token_counts
from pipeline.data.word_categories import read_word_categories
from pipeline.errors import PipelineError
from pipeline.executions import log_metrics_to
from pipeline.host_memory import keep_freed_host_memory
from pipeline.io import sha256_file, write_json, write_text
from pipeline.model import MoETransformer
from pipeline.model_io import load_model
from pipeline.paths import Paths
from pipeline.tracking import stage_run, tracking_uri
from stages.common import require, run_main

log = logging.getLogger("stages.evaluate")

HEADLINE_SUFFIXES = ("/acc", "/acc_norm", "/above_baseline_stderr", "/ppl", "/bits_per_byte")


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


def perplexities(
    ev: Loaded, splits: dict[str, TokenSplit], cfg: EvaluateConfig
) -> dict[str, float]:
    lengths = token_byte_lengths(ev.tokenizer)
    metrics = {}
    for split, opened in splits.items():
        result = perplexity(
            lambda idx: ev.model(idx).logits,
            opened.tokens,
            lengths,
            ev.window,
            cfg.perplexity_max_tokens,
            cfg.batch_size,
            ev.device,
            desc=f"perplexity {split}",
        )
        metrics.update({f"perplexity/{split}/{k}": v for k, v in result.items()})
    return metrics


def routing(ev: Loaded, paths: Paths, test: TokenSplit, cfg: EvaluateConfig) -> dict[str, float]:
    tokens = test.tokens
    return analyse_routing(
        ev.model,
        RoutingWindows(tokens, ev.window, cfg.routing_max_tokens, cfg.batch_size, ev.device),
        cfg,
        snapshots=paths.snapshots(),
        tok_bytes=token_bytes(ev.tokenizer),
        words=read_word_categories(paths.word_categories),
        domains=token_domains(
            sorted(paths.prepared_split("test").glob("*.parquet")), tokens, test.eot_id
        ),
        out_dir=paths.eval_plots_dir,
    )


def standard_tasks(cfg: EvaluateConfig, paths: Paths) -> StandardTasks:
    """The extra tasks, with a relative mirror taken from the repository root (as DVC runs)."""
    mirror = paths.root / cfg.datasets_mirror if cfg.datasets_mirror else None
    return StandardTasks(tuple(cfg.extra_tasks), mirror)


def run(params: Params, paths: Paths) -> dict[str, float]:
    """Evaluate; write ``metrics/eval.json``, the generations and the plots; return the metrics."""
    cfg = params.evaluate
    started = time.perf_counter()
    verify_digests(paths.tokenizer_dir, "tokenize")  # before any work: damaged inputs stop here
    verify_digests(paths.benchmarks_dir, "prepare")
    ev = load(paths)
    # Opened (each shard checked against its digest) once, for perplexity and routing.
    splits = {split: open_split(paths.token_split(split)) for split in ("validation", "test")}
    eot_id = splits["test"].eot_id
    lm = NativeLM(ev.model, ev.tokenizer, eot_id, ev.window, cfg.batch_size, params.seed)
    evaluator = harness_model(params, paths, lm, ev.device)  # before the long work: fail early

    metrics = perplexities(ev, splits, cfg)
    metrics.update(routing(ev, paths, splits["test"], cfg))
    samples = sample_generations(lm, cfg.generation, params.seed)
    write_json(paths.eval_generations, samples)
    write_text(
        paths.eval_plots_dir / "generations.md", generations_markdown(samples, cfg.generation)
    )
    counts = token_counts(open_split(paths.token_split("train"), verify=False))
    metrics.update(
        score_tasks(
            evaluator,
            list(cfg.tasks),
            standard_tasks(cfg, paths),
            paths.benchmark,
            cfg.limit,
            params.seed,
            unigram=(counts, ev.tokenizer, eot_id),
            training_text=lambda: iter_texts(read_prepared(paths.prepared_split("train")), 4096),
        )
    )
    write_json(paths.eval_metrics, metrics)  # no timings: the card stage depends on this file
    log.info("evaluated in %.1f s: %s", time.perf_counter() - started, headline(metrics))
    return metrics


def headline(metrics: dict[str, float]) -> dict[str, float]:
    """The scores that go into the train run, prefixed ``eval/``: perplexities, and each task's
    test-set accuracy and margin over its strongest baseline (no tiers, no dev set)."""
    return {
        f"eval/{key}": value
        for key, value in metrics.items()
        if key.endswith(HEADLINE_SUFFIXES)
        and not key.startswith("routing/")
        and not any(part in key for part in ("/dev/", "/tier/", "/baseline/"))
    }


def log_into_model_run(run_id: str, scores: dict[str, float]) -> None:
    """Add the eval scores to the train run; a store that lacks it (a fresh ``mlflow.db``
    beside a model pulled from a DVC remote) gets a warning, not a failed evaluation."""
    try:
        log_metrics_to(MlflowClient(tracking_uri()), run_id, scores, 0)
    except MlflowException as exc:
        log.warning("could not add eval scores to the train run %s: %s", run_id, exc)


def main() -> None:
    params = load_params()
    paths = Paths()
    inputs = {
        "model": sha256_file(require(paths.model_files.weights, "train")),
        "validation_tokens": read_manifest(paths.token_split("validation")).sha256,
        "test_tokens": read_manifest(paths.token_split("test")).sha256,
        "test": read_prepared(paths.prepared_split("test")).sha256,
        "word_categories": sha256_file(require(paths.word_categories, "prepare")),
        **{
            f"benchmark.{item_set}.{task}": sha256_file(
                require(paths.benchmark(task, item_set), "prepare")
            )
            for task in params.evaluate.tasks
            for item_set in ITEM_SETS
        },
    }
    upstream = {
        "train": ("model",),
        "tokenize": ("validation_tokens", "test_tokens"),
        "prepare": ("test", "word_categories"),  # the test documents' domains, the categories
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
        tracked.set_outputs({"eval_metrics": sha256_file(paths.eval_metrics)})
        if "train" in tracked.upstream:
            log_into_model_run(tracked.upstream["train"], headline(metrics))


if __name__ == "__main__":
    run_main("evaluate", main, process_setup=keep_freed_host_memory)
