"""The model card: a Hugging Face ``README.md`` whose metadata and text come from the pipeline's
own outputs, never typed by hand.

The metadata is ``huggingface_hub``'s :class:`ModelCardData` (license, language, tags,
``library_name``, ``model-index`` with one :class:`EvalResult` per score in ``metrics/eval.json``),
so the Hub shows the scores and tools can read them back. The body follows the sections of
Mitchell et al., "Model Cards for Model Reporting" (2019): model details, intended and
out-of-scope use, training data, training procedure, evaluation (with stderr and chance level),
routing analysis, limitations and risks, and reproducibility (commit, DVC hashes, MLflow runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pipeline.config import ModelConfig, Params

SKIPPED_HARNESS_KEYS = ("n", "chance")  # per-task facts, not scores
NOT_HARNESS = ("perplexity", "routing", "time")


@dataclass
class CardInputs:
    """Everything the card reports, read from the pipeline's outputs by the ``card`` stage.

    ``runs``: stage name → MLflow run id. ``lock``: stage name → ``{out path: md5}`` from
    ``dvc.lock``. ``plots``: image paths relative to the model directory."""

    params: Params
    model: ModelConfig
    vocab_size: int
    hf_config: dict[str, Any]
    eval_metrics: dict[str, float]
    train_metrics: dict[str, Any]
    prepare_stats: dict[str, Any]
    tokenize_metrics: dict[str, Any]
    runs: dict[str, str]
    lock: dict[str, dict[str, str]]
    git: dict[str, str]
    environment: dict[str, str]
    plots: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Score:
    """One lm-eval score: ``<task>/<metric>[/<filter>]`` with its stderr and the task's facts."""

    task: str
    metric: str
    value: float
    stderr: float | None
    chance: float | None
    n: float | None


def harness_scores(metrics: dict[str, float]) -> Iterator[Score]:
    """The lm-eval scores among the flat keys of ``metrics/eval.json``, in key order."""
    for key in sorted(metrics):
        task, _, metric = key.partition("/")
        base = metric.split("/")[0]
        if task in NOT_HARNESS or base in SKIPPED_HARNESS_KEYS or base.endswith("_stderr"):
            continue
        name, _, suffix = metric.partition("/")
        stderr_key = f"{task}/{name}_stderr" + (f"/{suffix}" if suffix else "")
        yield Score(
            task,
            metric,
            metrics[key],
            metrics.get(stderr_key),
            metrics.get(f"{task}/chance"),
            metrics.get(f"{task}/n"),
        )


def perplexity_scores(metrics: dict[str, float]) -> Iterator[tuple[str, str, float]]:
    """``(split, metric, value)`` for the perplexity and bits-per-byte of each split."""
    for key in sorted(metrics):
        parts = key.split("/")
        if parts[0] == "perplexity" and parts[-1] in ("ppl", "bits_per_byte"):
            yield parts[1], parts[2], metrics[key]


def eval_results(inputs: CardInputs) -> list[EvalResult]:
    """One ``model-index`` entry per score, named so it can be matched back to its key."""
    corpus = f"{inputs.params.card.model_name} corpus ({inputs.params.prepare.source})"
    results = [
        EvalResult(
            task_type="multiple-choice" if s.chance is not None else "text-generation",
            dataset_type=s.task,
            dataset_name=f"{s.task} (lm-eval, 0-shot)",
            dataset_split="test",
            metric_type=s.metric,
            metric_value=s.value,
            metric_name=f"{s.task}/{s.metric}",
        )
        for s in harness_scores(inputs.eval_metrics)
    ]
    results += [
        EvalResult(
            task_type="text-generation",
            dataset_type="held-out-corpus",
            dataset_name=corpus,
            dataset_split=split,
            metric_type=metric,
            metric_value=value,
            metric_name=f"perplexity/{split}/{metric}",
        )
        for split, metric, value in perplexity_scores(inputs.eval_metrics)
    ]
    return results


def card_data(inputs: CardInputs) -> ModelCardData:
    card = inputs.params.card
    hub_dataset = inputs.params.prepare.hf.name if inputs.params.prepare.source == "hf" else None
    return ModelCardData(
        model_name=card.model_name,
        license=card.license,
        language=list(card.language),
        tags=list(card.tags),
        library_name="transformers",
        pipeline_tag="text-generation",
        datasets=[hub_dataset] if hub_dataset else None,
        eval_results=eval_results(inputs),
    )


def render_card(inputs: CardInputs) -> ModelCard:
    body = "\n\n".join(
        section(inputs)
        for section in (
            _title,
            _model_details,
            _intended_use,
            _training_data,
            _training_procedure,
            _evaluation,
            _routing,
            _limitations,
            _reproducibility,
        )
    )
    return ModelCard(f"---\n{card_data(inputs).to_yaml()}\n---\n\n{body}\n")


# --------------------------------------------------------------------------- sections
def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.3e}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; a ``|`` inside a cell (``<|endoftext|>``) is escaped."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _title(inputs: CardInputs) -> str:
    m = inputs.model
    return (
        f"# {inputs.params.card.model_name}\n\n"
        f"A {m.n_layers}-layer decoder-only Mixture-of-Experts language model "
        f"({m.moe.num_experts} experts, top-{m.moe.top_k}) trained from scratch by "
        "[moe-pipeline](#reproducibility). Every number below is read from the pipeline's "
        "outputs by its `card` stage."
    )


def _model_details(inputs: CardInputs) -> str:
    m, t = inputs.model, inputs.train_metrics
    moe = m.moe
    router = f"{moe.router}" + (", top-k weights renormalised" if moe.renormalize else "")
    rows = [
        ["transformers architecture", f"`{inputs.hf_config['architectures'][0]}`"],
        ["parameters (total)", t.get("params_total")],
        ["parameters active per token", t.get("params_active")],
        [
            "layers / d_model / heads (kv heads)",
            f"{m.n_layers} / {m.d_model} / {m.n_heads} ({m.n_kv_heads})",
        ],
        ["experts per MoE layer / active (top-k)", f"{moe.num_experts} / {moe.top_k}"],
        ["expert hidden size / dense hidden size", f"{moe.expert_hidden} / {m.dense_hidden}"],
        ["shared experts", moe.num_shared_experts],
        ["dense layers", f"first {m.first_dense_layers}, then MoE every {m.moe_every}"],
        ["router", router],
        ["attention", f"grouped-query, RoPE (theta {m.rope_theta:g}), q/k RMSNorm: {m.qk_norm}"],
        ["context length", m.max_seq_len],
        ["tied embeddings", m.tie_embeddings],
        [
            "tokenizer",
            f"byte-level BPE, {inputs.vocab_size} tokens "
            f"(`{inputs.params.tokenize.eot_token}` ends documents)",
        ],
        ["weights dtype", inputs.hf_config.get("dtype", "float32")],
        ["license", inputs.params.card.license],
    ]
    return "## Model details\n\n" + _table(["", ""], rows)


def _intended_use(inputs: CardInputs) -> str:
    return (
        "## Intended use\n\n"
        "Research and teaching on Mixture-of-Experts language models: routing behaviour, "
        "load balancing, training and evaluation pipelines, export to `transformers`. "
        "Load it with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained` "
        "on this directory.\n\n"
        "## Out-of-scope use\n\n"
        "Anything where the content of the generated text matters: the model is small, trained "
        f"on a {inputs.params.prepare.source} corpus of limited size, not instruction-tuned and "
        "not aligned. Do not use it for advice, facts, decisions about people, or production "
        "text generation."
    )


def _training_data(inputs: CardInputs) -> str:
    p = inputs.params.prepare
    source = {
        "synthetic": f"generated stories (`prepare.synthetic`, {p.synthetic.size_mb:g} MB)",
        "hf": f"Hugging Face dataset `{p.hf.name}` (config `{p.hf.config}`, split `{p.hf.split}`)",
        "files": f"local files `{p.files.glob}`",
    }[p.source]
    splits = inputs.prepare_stats.get("splits", {})
    rows = [
        [
            split,
            info.get("documents"),
            info.get("bytes"),
            inputs.tokenize_metrics.get(split, {}).get("tokens"),
            f"`{info.get('sha256', 'n/a')}`",
        ]
        for split, info in splits.items()
    ]
    return (
        f"## Training data\n\nSource: {source}; Unicode normalisation {p.normalize}, documents "
        f"under {p.min_chars} characters and exact duplicates removed.\n\n"
        + _table(["split", "documents", "bytes", "tokens", "sha256 (parquet)"], rows)
    )


def _training_procedure(inputs: CardInputs) -> str:
    tr, t = inputs.params.train, inputs.train_metrics
    o, moe, run = tr.optim, tr.model.moe, tr.runtime
    rows = [
        [
            "steps × micro-batch × grad accum × seq len",
            f"{t.get('steps', tr.max_steps)} × {tr.micro_batch_size} × {tr.grad_accum} × "
            f"{tr.seq_len}",
        ],
        [
            "optimizer",
            f"AdamW lr {o.lr:g} (warmup {o.warmup_steps}, held, then cosine over the last "
            f"{o.decay_fraction:.0%} of steps to {o.min_lr_ratio:g}×), betas ({o.beta1}, "
            f"{o.beta2}), weight decay {o.weight_decay}, "
            f"clip {o.grad_clip}",
        ],
        [
            "router losses",
            f"load balance {moe.aux_loss_weight}, z-loss {moe.z_loss_weight}, "
            f"sequence balance {moe.seq_aux_loss_weight}",
        ],
        ["capacity factor", moe.capacity_factor or "dropless"],
        [
            "precision / devices / strategy",
            f"{run.precision} / {run.devices}×{run.num_nodes} ({run.accelerator}) / {run.strategy}",
        ],
        ["hardware", inputs.environment.get("hardware", "n/a")],
        ["wall time (s)", t.get("wall_time_s")],
        ["throughput (tokens/s)", t.get("tokens_per_s")],
        ["MFU", t.get("mfu")],
        [
            "final train loss / validation loss",
            f"{_fmt(t.get('train_loss'))} / {_fmt(t.get('val_loss'))}",
        ],
        ["seed", inputs.params.seed],
    ]
    return "## Training procedure\n\n" + _table(["", ""], rows)


def _evaluation(inputs: CardInputs) -> str:
    scores = [
        [s.task, s.metric, s.value, s.stderr, s.chance, s.n]
        for s in harness_scores(inputs.eval_metrics)
    ]
    ppl = [
        [split, metric, value] for split, metric, value in perplexity_scores(inputs.eval_metrics)
    ]
    return (
        "## Evaluation\n\n"
        "Zero-shot multiple-choice tasks through lm-evaluation-harness (`evaluate.tasks`, "
        f"`evaluate.extra_tasks`; model path: `{inputs.params.evaluate.model}`). Chance is the "
        "mean of 1 / number of choices over the items.\n\n"
        + _table(["task", "metric", "value", "stderr", "chance", "items"], scores)
        + "\n\nHeld-out perplexity (bits per byte: NLL over the UTF-8 bytes the tokens cover, "
        "comparable across tokenizers):\n\n" + _table(["split", "metric", "value"], ppl)
    )


def _routing(inputs: CardInputs) -> str:
    m = inputs.eval_metrics
    layers = sorted(
        {k.split("/")[1] for k in m if k.startswith("routing/layer")},
        key=lambda name: int(name.removeprefix("layer")),
    )
    rows = [
        [layer, *(m.get(f"routing/{layer}/{s}") for s in ("max_over_mean", "cv", "entropy"))]
        for layer in layers
    ]
    images = "\n\n".join(f"![{path}]({path})" for path in inputs.plots)
    return (
        f"## Routing analysis\n\nOn {_fmt(m.get('routing/tokens'))} test tokens: the load of the "
        "busiest expert over the mean (1 = balanced), the coefficient of variation of the loads, "
        f"and the mean router entropy (ln {inputs.model.moe.num_experts} = "
        f"{math.log(inputs.model.moe.num_experts):.3f} is uniform).\n\n"
        + _table(["layer", "max / mean load", "cv", "entropy (nats)"], rows)
        + ("\n\n" + images if images else "")
    )


def _limitations(inputs: CardInputs) -> str:
    notes = [
        "Small and briefly trained: fluent-looking text is not evidence of knowledge; scores "
        "near chance level are expected on anything beyond its training distribution.",
        "Benchmarks are few and narrow; the generated tasks come from the same generator as a "
        "synthetic training corpus and overstate general ability.",
        "The corpus may carry the biases of its source; nothing was filtered for them.",
    ]
    if inputs.model.moe.router == "expert_choice":
        notes.append(
            "Trained with expert-choice routing, which is not causal; inference (and this "
            "export) routes by token-choice top-k softmax, which differs from training."
        )
    if inputs.hf_config.get("dtype") == "bfloat16":
        notes.append("Weights rounded to bfloat16 on export: scores were measured as evaluated.")
    return "## Limitations and risks\n\n" + "\n".join(f"- {n}" for n in notes)


def _reproducibility(inputs: CardInputs) -> str:
    commit = inputs.git.get("mlflow.source.git.commit", "n/a")
    runs = _table(["stage", "MLflow run id"], [[s, f"`{r}`"] for s, r in inputs.runs.items()])
    outs = [
        [stage, f"`{path}`", f"`{md5}`"]
        for stage, paths in inputs.lock.items()
        for path, md5 in paths.items()
    ]
    env = ", ".join(f"{k} {v}" for k, v in inputs.environment.items() if k != "hardware")
    return (
        "## Reproducibility\n\n"
        f"Git commit `{commit}` (uncommitted changes: {inputs.git.get('git.dirty', 'n/a')}). "
        "Rebuild with (`dvc repro` runs each stage's `python -m stages.<name>`; this card came "
        "from `python -m stages.card`):\n\n"
        f"```\ngit checkout {commit}\ndvc pull     # the cached outputs, or rebuild them:\n"
        "dvc repro card\n```\n\n"
        f"Environment: {env}.\n\n{runs}\n\nOutputs as pinned in `dvc.lock` (md5):\n\n"
        + (_table(["stage", "output", "md5"], outs) if outs else "no `dvc.lock` found")
    )
