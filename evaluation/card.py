"""The model card: a Hugging Face ``README.md`` whose metadata and text come from the pipeline's
own outputs, never typed by hand.

The metadata is ``huggingface_hub``'s :class:`ModelCardData` (license, language, tags,
``library_name``, ``model-index`` with one :class:`EvalResult` per score in ``metrics/eval.json``),
so the Hub shows the scores and tools can read them back. The body follows the sections of
Mitchell et al., "Model Cards for Model Reporting" (2019): model details, intended and
out-of-scope use, training data, training procedure, evaluation (with stderr and chance level),
routing analysis, limitations and risks, and reproducibility (DVC hashes, how to find the MLflow runs).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from evaluation.baselines import strongest
from pipeline.config import ModelConfig, Params
from pipeline.data.benchmark_sets import ITEM_SETS

#: Keys under a task's scores that are not scores of their own.
NOT_SCORES = ("n", "chance", "contamination", "baseline_best", "above_baseline_stderr")
NOT_HARNESS = ("perplexity", "routing")


@dataclass
class CardInputs:
    """Everything the card reports, read from the pipeline's outputs by the ``card`` stage.

    ``lock``: stage name → ``{out path: md5}`` from ``dvc.lock``. ``plots``: image paths
    relative to the model directory. Nothing here may differ between two stores or checkouts
    holding the same files (a teammate's ``dvc pull`` regenerates this very card): no MLflow run
    id, no commit; those are the registered model version's tags."""

    params: Params
    model: ModelConfig
    vocab_size: int
    hf_config: dict[str, Any]
    eval_metrics: dict[str, float]
    train_metrics: dict[str, Any]
    prepare_stats: dict[str, Any]
    tokenize_metrics: dict[str, Any]
    lock: dict[str, dict[str, str]]
    environment: dict[str, str]
    plots: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Score:
    """One lm-eval score with its stderr and the task's facts. ``key`` is the task's prefix in
    ``metrics/eval.json``: ``<task>/<set>`` for a generated task's item set, ``<task>`` for a
    standard one (``item_set`` None)."""

    task: str
    item_set: str | None
    metric: str
    value: float
    stderr: float | None
    chance: float | None
    n: float | None

    @property
    def key(self) -> str:
        return f"{self.task}/{self.item_set}" if self.item_set else self.task


def harness_scores(metrics: dict[str, float]) -> Iterator[Score]:
    """The lm-eval scores among the flat keys of ``metrics/eval.json``, in key order (tiers,
    baselines and per-task facts left out)."""
    for key in sorted(metrics):
        parts = key.split("/")
        if parts[0] in NOT_HARNESS or "tier" in parts or "baseline" in parts:
            continue
        item_set = parts[1] if len(parts) > 2 and parts[1] in ITEM_SETS else None
        prefix = "/".join(parts[: 2 if item_set else 1])
        metric = key.removeprefix(prefix + "/")
        name, _, suffix = metric.partition("/")
        if name in NOT_SCORES or name.endswith("_stderr"):
            continue
        stderr_key = f"{prefix}/{name}_stderr" + (f"/{suffix}" if suffix else "")
        yield Score(
            parts[0],
            item_set,
            metric,
            metrics[key],
            metrics.get(stderr_key),
            metrics.get(f"{prefix}/chance"),
            metrics.get(f"{prefix}/n"),
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
            metric_name=f"{s.key}/{s.metric}",
        )
        for s in harness_scores(inputs.eval_metrics)
        if s.item_set != "dev"  # dev items choose the defaults; the Hub gets the test scores
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
            _routing_health,
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
        "synthetic": "the project's seeded story generator: short English stories and tracking "
        f"and counting episodes (`prepare.synthetic`, {p.synthetic.size_mb:g} MB)",
        "hf": f"Hugging Face dataset `{p.hf.name}` (config `{p.hf.config}`, split `{p.hf.split}`)",
        "files": f"local files `{p.files.glob}`",
    }[p.source]
    if inputs.params.card.training_data:
        source = f"{inputs.params.card.training_data} ({source})"
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
            f"load balance {moe.aux_loss_weight} ({moe.balance}), z-loss {moe.z_loss_weight}",
        ],
        ["capacity factor", moe.capacity_factor or "dropless"],
        [
            "precision / devices / strategy",
            f"{run.precision} / {run.devices}×{run.num_nodes} ({run.accelerator}) / {run.strategy}",
        ],
        ["hardware", inputs.environment.get("hardware", "n/a")],
        ["initial weights", initial_weights(inputs)],
        ["MoE backend self-check", t.get("moe_backend_check", "n/a")],
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


def initial_weights(inputs: CardInputs) -> str:
    init = inputs.params.train.init
    if init.upcycle_from is None:
        return "random (from scratch)"
    method = (
        f"drop, {init.drop_ratio:g} of each expert's units redrawn"
        if init.method == "drop"
        else "copy"
    )
    return (
        f"sparse-upcycled ({method}; router {init.router_init}) from the dense model "
        f"`{init.upcycle_from}`, weights SHA-256 "
        f"`{inputs.train_metrics.get('upcycled_from_sha256', 'n/a')}`: its training run is the "
        "MLflow run tagged `output.model.sha256` with that digest (this model's train run "
        "names it, `upstream.train.run_id`)"
    )


def _evaluation(inputs: CardInputs) -> str:
    m = inputs.eval_metrics
    generated = [s for s in harness_scores(m) if s.item_set == "test" and s.metric == "acc"]
    standard = [
        [s.task, s.metric, s.value, s.stderr, s.chance, s.n]
        for s in harness_scores(m)
        if not s.item_set
    ]
    rows, verdicts = [], []
    for s in generated:
        name, best = strongest(m, s.task, "test")
        margin = m.get(f"{s.key}/above_baseline_stderr")
        rows.append([s.task, s.value, s.stderr, s.chance, f"{_fmt(best)} ({name})", margin,
                     m.get(f"{s.key}/contamination"), s.n, m.get(f"{s.task}/dev/acc")])  # fmt: skip
        verdicts.append(_verdict(s.task, name, best, margin))
    ppl = [[split, metric, value] for split, metric, value in perplexity_scores(m)]
    text = (
        "## Evaluation\n\n"
        f"{_probe_note(inputs)}Zero-shot multiple-choice tasks through lm-evaluation-harness "
        f"(model path: `{inputs.params.evaluate.model}`). Each generated task has two disjoint "
        "item sets drawn from independent seeds: **dev**, on which the defaults were chosen, "
        "and **test**, reported here once. Chance is the mean of 1 / number of choices; the "
        "strongest baseline is the best of a set of trivial rules (position, answer prior, "
        'first / last / most mentioned choice, task shortcuts such as "whoever found it" or '
        '"the opening count") and a unigram language model scored through the same harness '
        "path; the margin is the model's accuracy minus it, in stderr (the larger of the "
        "model's and the binomial stderr at the baseline's accuracy). "
        "Contamination: the share of test items sharing a 13-gram with the training split.\n\n"
        + _table(
            [
                "task",
                "test acc",
                "stderr",
                "chance",
                "strongest baseline",
                "margin (stderr)",
                "contamination",
                "items",
                "dev acc",
            ],
            rows,
        )
        + ("\n\n" + "\n".join(f"- {v}" for v in verdicts) if verdicts else "")
        + _tiers(m, [s.task for s in generated])
    )
    if standard:
        mirror = inputs.params.evaluate.datasets_mirror
        source = f"a local mirror (`{mirror}`)" if mirror else "the Hugging Face Hub"
        text += (
            f"\n\nStandard lm-eval tasks (lm-eval's own task definitions, 0-shot; datasets "
            f"from {source}):\n\n"
            + _table(["task", "metric", "value", "stderr", "chance", "items"], standard)
        )
    return (
        text + "\n\nHeld-out perplexity (bits per byte: NLL over the UTF-8 bytes the tokens cover, "
        "comparable across tokenizers):\n\n" + _table(["split", "metric", "value"], ppl)
    )


def _verdict(task: str, baseline: str, best: float, margin: float | None) -> str:
    if margin is None:
        return f"{task}: no stderr, no verdict"
    if margin >= 2:
        return f"{task}: above the strongest baseline ({baseline}, {_fmt(best)}) by {margin:.1f} stderr"
    return (
        f"{task}: **not** above the strongest baseline ({baseline}, {_fmt(best)}): "
        f"margin {margin:.1f} stderr; this model has not learned the task"
    )


def _tiers(metrics: dict[str, float], tasks: list[str]) -> str:
    rows = []
    for task in tasks:
        prefix = f"{task}/test/tier/"
        tiers = sorted(
            {k.removeprefix(prefix).rsplit("/", 1)[0] for k in metrics if k.startswith(prefix)}
        )
        rows += [
            [task, tier, *(metrics.get(f"{prefix}{tier}/{m}") for m in ("acc", "acc_stderr", "n"))]
            for tier in tiers
        ]
    if not rows:
        return ""
    return "\n\nBy difficulty (test items):\n\n" + _table(
        ["task", "tier", "acc", "stderr", "items"], rows
    )


def _probe_note(inputs: CardInputs) -> str:
    """On a corpus other than the synthetic one, the generated tasks are out-of-domain probes."""
    if inputs.params.prepare.source == "synthetic":
        return ""
    return (
        "The generated tasks below come from the project's own story generator, not from this "
        "model's training corpus: read them as out-of-domain probes. "
    )


def _routing(inputs: CardInputs) -> str:
    """The routing analyses (:mod:`evaluation.routing`): one table row per MoE layer, then a
    subsection per analysis that ran (its metrics present), with its reference levels and plots."""
    m, moe = inputs.eval_metrics, inputs.model.moe
    e, k = moe.num_experts, moe.top_k
    layers = sorted(
        {key.split("/")[1] for key in m if key.startswith("routing/layer")},
        key=lambda name: int(name.removeprefix("layer")),
    )
    snapshots = sorted(
        {key.split("/")[2] for key in m if key.startswith("routing/saturation/at_")},
        key=lambda at: float(at.removeprefix("at_").removesuffix("pct")),
    )
    columns = [  # (header, key under routing/layer<i>/, its shuffled reference's key)
        ("max / mean load", "max_over_mean", None),
        ("cv", "cv", None),
        ("entropy (nats)", "entropy", None),
        *[(f"saturation at {at[3:-3]} %", f"saturation/{at}", None) for at in snapshots],
        ("max co-activation", "coactivation/max", None),
        ("domain top share (shuffled)", "domain/top_share", "domain/top_share_shuffled"),
        ("token top share (shuffled)", "vocab/top_share", "vocab/top_share_shuffled"),
    ]
    columns = [c for c in columns if any(f"routing/{layer}/{c[1]}" in m for layer in layers)]

    def cell(layer: str, key: str, shuffled: str | None) -> str:
        value = _fmt(m.get(f"routing/{layer}/{key}"))
        return f"{value} ({_fmt(m.get(f'routing/{layer}/{shuffled}'))})" if shuffled else value

    images: dict[str, list[str]] = {}
    for path in inputs.plots:  # plots/<analysis>/<file>.png, or plots/<file>.png
        parts = path.split("/")
        images.setdefault(parts[1] if len(parts) > 2 else "", []).append(path)

    def section(title: str, folder: str, text: str) -> str:
        shown = "".join(f"\n\n![{p}]({p})" for p in images.pop(folder, []))
        return f"### {title}\n\n{text}{shown}"

    uniform = f"k/E = {k}/{e} = {k / e:.3f}"
    sections = [
        f"## Routing analysis\n\nOn {_fmt(m.get('routing/tokens'))} test tokens, routed by one "
        "forward pass of the final model. Saturation, co-activation, domain and vocabulary "
        "specialisation follow OLMoE (Muennighoff et al. 2024, arXiv:2409.02060, §5) and need "
        "no word lexicon. A top share in parentheses is the same statistic with the group labels "
        "shuffled over the tokens: what routing blind to the group gives.\n\n"
        + _table(
            ["layer", *(c[0] for c in columns)],
            [
                [layer, *(cell(layer, key, shuffled) for _, key, shuffled in columns)]
                for layer in layers
            ],
        ),  # fmt: skip
        section(
            "Expert load",
            "",
            "The load of the busiest expert over the mean (1 = balanced), the coefficient of "
            f"variation of the loads, and the mean router entropy (ln {e} = {math.log(e):.3f} "
            "is uniform).",
        ),
    ]
    if snapshots:
        means = ", ".join(
            f"{at[3:-3]} %: {_fmt(m[f'routing/saturation/{at}'])}" for at in snapshots
        )
        sections.append(section(
            "Router saturation",
            "saturation",
            "Of each token's top-k experts in the final model, the fraction its router had "
            "already chosen in a snapshot of the weights taken part-way through training "
            "(`train.monitor.snapshot_fractions`), averaged over the first "
            f"{_fmt(m.get('routing/saturation/tokens'))} test tokens: 1 = routing already "
            f"final; routing unrelated to the final one gives {uniform}. Mean over layers, by "
            f"share of the training steps: {means}.",
        ))  # fmt: skip
    if any("coactivation/max" in key for key in m):
        sections.append(section(
            "Expert co-activation",
            "coactivation",
            "P(j | i): of the tokens routed to expert i, the fraction also routed to expert j. "
            f"A router choosing {k} distinct experts at random gives (k-1)/(E-1) = "
            f"{(k - 1) / (e - 1):.3f} for every pair; the table gives each layer's largest.",
        ))  # fmt: skip
    if "routing/domains" in m:
        sections.append(section(
            "Domain specialisation",
            "domains",
            f"The share of each source domain's tokens routed to each expert "
            f"({_fmt(m['routing/domains'])} domains among the analysed tokens; shares sum to k). "
            "The table gives the mean over domains of each domain's largest share; uniform "
            f"routing gives {uniform}, a domain always sent to one expert 1.",
        ))  # fmt: skip
    if "routing/vocab/token_ids" in m:
        sections.append(section(
            "Vocabulary specialisation",
            "vocabulary",
            f"For the {_fmt(m['routing/vocab/token_ids'])} most frequent token ids (with at "
            "least `evaluate.routing_vocab_min_count` occurrences): the fraction of a token's "
            "occurrences routed to its most chosen expert, averaged over the ids "
            f"(uniform routing: {uniform}; 1 = the token always goes to that expert). The plot "
            "names each token's top expert per layer.",
        ))  # fmt: skip
    if any(key.startswith("routing/tokens/") for key in m):
        sections.append(section(
            "Word categories",
            "specialisation",
            "Where the tokens of each word category (the corpus source's own word tags) are "
            "routed: each row is the category's share of assignments per expert.",
        ))  # fmt: skip
    others = "".join(f"\n\n![{p}]({p})" for paths in images.values() for p in paths)
    return "\n\n".join(sections) + others


def _routing_health(inputs: CardInputs) -> str:
    """The final routing health per MoE layer that training measured
    (``routing_health/layer<i>/<name>`` in metrics/train.json: pipeline/train/routing_health.py),
    and the run's routing digest."""
    t = inputs.train_metrics
    if "routing_health/step" not in t:
        return ""
    health: dict[str, dict[str, Any]] = {}
    for key, value in t.items():
        if key.startswith("routing_health/layer"):
            layer, name = key.split("/")[1:]
            health.setdefault(layer, {})[name] = value
    step = t["routing_health/step"]
    columns = ["max_vio", "dead_fraction", "entropy", "dropped_fraction", "bias_range"]
    columns = [c for c in columns if any(c in row for row in health.values())]
    rows = [[layer, *(_fmt(row.get(c)) for c in columns)] for layer, row in health.items()]
    return (
        f"### Routing health in training (step {step})\n\nMaxVio is max over experts of "
        "(load - mean) / "
        "mean for that step's batch (0 = balanced); dead experts are those below "
        f"{inputs.params.train.monitor.dead_expert_load:g} × the mean load since the previous "
        "logging step; entropy in nats (ln E = uniform). Routing digest of the run: "
        f"`{inputs.train_metrics.get('routing_digest', 'n/a')}`.\n\n"
        + _table(["layer", *columns], rows)
    )


def _limitations(inputs: CardInputs) -> str:
    notes = [
        "Small and briefly trained: fluent-looking text is not evidence of knowledge; scores "
        "near chance level are expected on anything beyond its training distribution.",
        "Benchmarks are few and narrow; the generated tasks come from the same generator as a "
        "synthetic training corpus and overstate general ability."
        if inputs.params.prepare.source == "synthetic"
        else "The generated tasks are out-of-domain probes for a model trained on this corpus; "
        "they say little about what it learned of its own text (perplexity and bits per byte "
        "do).",
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
    outs = [
        [stage, f"`{path}`", f"`{md5}`"]
        for stage, paths in inputs.lock.items()
        for path, md5 in paths.items()
    ]
    env = ", ".join(f"{k} {v}" for k, v in inputs.environment.items() if k != "hardware")
    return (
        "## Reproducibility\n\n"
        "Rebuild from the commit whose `dvc.lock` pins the outputs below (`dvc repro` runs each "
        "stage's `python -m stages.<name>`; this card came from `python -m stages.card`):\n\n"
        "```\ngit checkout <that commit>\ndvc pull     # the cached outputs, or rebuild them:\n"
        "dvc repro card\n```\n\n"
        f"Environment: {env}.\n\n"
        "MLflow: the registered model version tagged `weights.sha256` with the SHA-256 of "
        "`model.safetensors` names the commit and the export, train and tokenize runs; each "
        "stage's run leads to its upstream runs (`upstream.<stage>.run_id`).\n\n"
        "Outputs as pinned in `dvc.lock` (md5):\n\n"
        + (_table(["stage", "output", "md5"], outs) if outs else "no `dvc.lock` found")
    )
