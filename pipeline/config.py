"""Typed schema of ``params.yaml``: one section per stage plus ``seed``.

Every stage calls :func:`load_params` first, so a typo or an impossible value stops the stage
with a message naming the key, the value and what was expected — before anything is written.
Unknown keys are errors (``extra="forbid"``): a misspelt key silently falling back to a default
is the most expensive kind of config bug in a training pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import PipelineError

PARAMS_FILE = Path("params.yaml")


class ConfigError(PipelineError, ValueError):
    """params.yaml is missing, unreadable or invalid; the message names the key and value."""


class Section(BaseModel):
    """Base of every params section: strict types, no unknown keys, immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------- prepare
class BenchmarkItems(Section):
    """Items per benchmark task in each item set: ``dev`` to choose defaults and tune on,
    ``test`` to report (drawn from independent streams; disjoint)."""

    dev: int = Field(500, ge=10, le=100_000)
    test: int = Field(1000, ge=10, le=100_000)


class SyntheticSource(Section):
    size_mb: float = Field(8.0, gt=0, le=10_000, description="corpus size in MB of UTF-8 text")
    benchmark_items: BenchmarkItems = BenchmarkItems()
    episode_share: float = Field(
        0.8,
        ge=0,
        le=1,
        description="share of documents that are tracking / counting episodes shaped like the "
        "benchmark items (new instances), the rest being stories",
    )


class HFSource(Section):
    name: str | None = Field(None, description="hub id or local dataset dir for load_dataset")
    config: str | None = None
    split: str = "train"
    text_field: str = "text"
    streaming: bool = Field(
        False,
        description="iterate the files without building the datasets cache (memory bounded by "
        "one record batch); each data file is then a task prepare.num_workers share",
    )
    max_documents: int | None = Field(
        None, ge=1, description="read only the first N rows, in order (one task: no parallelism)"
    )
    domain_field: str | None = Field(
        None, description="field holding each document's domain label; null = the dataset's name"
    )


DOMAIN_MODES = ("directory", "file")


class FilesSource(Section):
    glob: str | None = Field(None, description="glob of .txt / .jsonl / .parquet files")
    text_field: str = "text"
    split_txt: Literal["none", "paragraphs"] = Field(
        "none",
        description="none: a .txt file is one document; paragraphs: cut it at blank lines into "
        "documents of at least document_chars characters (pipeline/data/text_split.py)",
    )
    document_chars: int = Field(
        2000,
        ge=16,
        description="split_txt: paragraphs: a document ends at the first blank line after this "
        "many characters, or, without one, at a sentence end within twice that",
    )
    domain: str = Field(
        "directory",
        description="each document's domain label: directory (the first directory under the "
        "glob's root, or the root's name for files directly in it), file (the path under the "
        "root) or field:<name> (a JSONL/Parquet field)",
    )

    @model_validator(mode="after")
    def _domain_is_known(self) -> FilesSource:
        field = self.domain.removeprefix("field:")
        if self.domain not in DOMAIN_MODES and (field == self.domain or not field):
            raise ValueError(
                f"prepare.files.domain = {self.domain!r}: expected directory, file or field:<name>"
            )
        return self


class SplitFractions(Section):
    validation: float = Field(0.02, gt=0, lt=0.5)
    test: float = Field(0.02, gt=0, lt=0.5)


class PrepareConfig(Section):
    source: Literal["synthetic", "hf", "files"] = "synthetic"
    synthetic: SyntheticSource = SyntheticSource()
    hf: HFSource = HFSource()
    files: FilesSource = FilesSource()
    normalize: Literal["NFC", "NFKC", "none"] = "NFC"
    min_chars: int = Field(32, ge=1, description="documents shorter than this are dropped")
    max_document_mb: float = Field(
        16.0,
        gt=0,
        description="a longer document (JSONL line, Parquet or hf value, whole .txt file) is "
        "refused, read in bounded pieces so it never fills memory",
    )
    split: SplitFractions = SplitFractions()
    shard_mb: float = Field(
        64.0,
        gt=0,
        description="MB of text per output Parquet shard, and of input files grouped into one "
        "task; a larger .jsonl file is cut into tasks of at most this size "
        "(pipeline/data/sources.py: plan_units)",
    )
    num_workers: int = Field(
        1, ge=1, description="processes reading tasks in parallel; outputs do not depend on it"
    )

    @model_validator(mode="after")
    def _source_is_configured(self) -> PrepareConfig:
        if self.source == "hf" and not self.hf.name:
            raise ValueError("prepare.source is 'hf' but prepare.hf.name is not set")
        if self.source == "files" and not self.files.glob:
            raise ValueError("prepare.source is 'files' but prepare.files.glob is not set")
        return self


# --------------------------------------------------------------------------- tokenize
UINT16_VOCAB_LIMIT = 2**16


class TokenizeConfig(Section):
    vocab_size: int = Field(4096, ge=260, le=2**31 - 1)
    min_frequency: int = Field(2, ge=1)
    special_tokens: list[str] = ["<|endoftext|>"]
    eot_token: str = "<|endoftext|>"
    token_dtype: Literal["uint16", "uint32"] = "uint16"
    batch_size: int = Field(1024, ge=1, description="documents per encode_batch call")
    train_max_mb: float | None = Field(
        None, gt=0, description="train the BPE on the first N MB of the train split; null = all"
    )
    num_workers: int = Field(
        1,
        ge=1,
        description="processes encoding shards in parallel, each with cpu_count / num_workers "
        "tokenizer threads (RAYON_NUM_THREADS if set); outputs do not depend on it",
    )

    @model_validator(mode="after")
    def _consistent(self) -> TokenizeConfig:
        if self.eot_token not in self.special_tokens:
            raise ValueError(
                f"tokenize.eot_token {self.eot_token!r} must be one of "
                f"tokenize.special_tokens {self.special_tokens}"
            )
        if self.token_dtype == "uint16" and self.vocab_size > UINT16_VOCAB_LIMIT:
            raise ValueError(
                f"tokenize.vocab_size = {self.vocab_size} does not fit in uint16 token files "
                f"(max {UINT16_VOCAB_LIMIT}); set tokenize.token_dtype: uint32"
            )
        return self


# --------------------------------------------------------------------------- train
class MoEConfig(Section):
    """The mixture-of-experts feed-forward layer (``docs/ARCHITECTURE.md``, "The MoE layer").

    What the weights mean only: which implementation computes the layer is a runtime choice
    (``train.runtime.backend``), so a checkpoint resumes under another backend.
    """

    num_experts: int = Field(8, ge=1, le=4096)
    top_k: int = Field(
        2, ge=1, description="experts per token (capacity per expert for expert_choice)"
    )
    expert_hidden: int = Field(128, ge=1, description="SwiGLU hidden size of one expert")
    num_shared_experts: int = Field(0, ge=0, description="always-on experts added to every token")
    router: Literal["softmax_topk", "sigmoid_bias", "expert_choice"] = "softmax_topk"
    renormalize: bool = Field(True, description="renormalise the top-k weights to sum to 1")
    capacity_factor: float | None = Field(
        None, gt=0, description="slots per expert = factor * tokens * k / experts; null = dropless"
    )
    drop_policy: Literal["probability", "position"] = Field(
        "probability", description="which tokens an over-full expert keeps"
    )
    bias_update_rate: float = Field(
        1e-3, ge=0, description="aux-loss-free bias step (sigmoid_bias)"
    )
    n_groups: int = Field(
        1,
        ge=1,
        description="group-limited routing (DeepSeek-V3): the experts form n_groups groups of "
        "consecutive ids; 1 = no groups (pipeline/model/router.py)",
    )
    topk_groups: int = Field(
        1,
        ge=1,
        description="groups a token may route to: the best by the sum of their two highest "
        "scores; n_groups = no limit",
    )
    balance: Literal["micro", "sequence", "global"] = Field(
        "micro",
        description="what the load-balancing loss balances: each micro-batch (over all ranks), "
        "each sequence (DeepSeek-V3), or the optimizer step's whole batch (global; "
        "pipeline/model/losses.py)",
    )
    aux_loss_weight: float = Field(
        0.01, ge=0, description="weight of the load-balancing loss (its scope: balance)"
    )
    z_loss_weight: float = Field(1e-3, ge=0, description="router z-loss")

    @model_validator(mode="before")
    @classmethod
    def _sequence_weight_is_a_scope(cls, data: Any) -> Any:
        """``seq_aux_loss_weight`` became ``balance: sequence`` with ``aux_loss_weight`` as its
        weight: a 0 is dropped (every model_config.json written before holds one), a weight
        alone converts, and a weight beside a Switch weight names the keys to set."""
        if not isinstance(data, dict) or "seq_aux_loss_weight" not in data:
            return data
        data = dict(data)
        weight = data.pop("seq_aux_loss_weight")
        if not weight:
            return data
        if data.get("aux_loss_weight", 0.01) or data.get("balance", "sequence") != "sequence":
            raise ValueError(
                f"seq_aux_loss_weight = {weight} is replaced by balance: sequence, whose weight "
                "is aux_loss_weight (one balance loss per model): set balance: sequence and "
                f"aux_loss_weight: {weight}, and remove seq_aux_loss_weight"
            )
        return {**data, "balance": "sequence", "aux_loss_weight": weight}

    @model_validator(mode="after")
    def _k_fits(self) -> MoEConfig:
        if self.top_k > self.num_experts:
            raise ValueError(
                f"train.model.moe.top_k = {self.top_k} exceeds "
                f"train.model.moe.num_experts = {self.num_experts}"
            )
        return self

    @model_validator(mode="after")
    def _groups_fit(self) -> MoEConfig:
        experts, groups, kept = self.num_experts, self.n_groups, self.topk_groups
        key = "train.model.moe"
        if experts % groups:
            raise ValueError(f"{key}.n_groups = {groups} must divide num_experts = {experts}")
        if groups > 1 and experts // groups < 2:
            raise ValueError(
                f"{key}.n_groups = {groups} leaves {experts // groups} expert per group; a "
                "group is ranked by its two best scores, so each needs at least 2 experts"
            )
        if kept > groups:
            raise ValueError(f"{key}.topk_groups = {kept} exceeds n_groups = {groups}")
        if self.top_k > kept * (experts // groups):
            raise ValueError(
                f"{key}.top_k = {self.top_k} exceeds the {kept * (experts // groups)} experts "
                f"of topk_groups = {kept} groups of {experts // groups}"
            )
        if self.group_limited and self.router == "expert_choice":
            raise ValueError(
                f"{key}.n_groups = {groups} with topk_groups = {kept}: group-limited routing "
                "is token choice; expert_choice has no per-token groups (set n_groups: 1)"
            )
        return self

    @property
    def group_limited(self) -> bool:
        """Whether a token may route to only some of the expert groups."""
        return self.topk_groups < self.n_groups


class ModelConfig(Section):
    """The model spec: what the weights mean. Decoder-only transformer; the vocabulary size comes
    from the trained tokenizer. Together with it, this is the model's identity
    (``pipeline.model_io.model_identity``): weights load only into the same spec."""

    d_model: int = Field(128, ge=8)
    n_layers: int = Field(4, ge=1)
    n_heads: int = Field(4, ge=1)
    n_kv_heads: int = Field(2, ge=1, description="grouped-query attention: key/value heads")
    dense_hidden: int = Field(384, ge=1, description="SwiGLU hidden size of dense layers")
    moe_every: int = Field(
        1, ge=1, description="layer i is MoE when (i - first_dense_layers) % moe_every == 0"
    )
    first_dense_layers: int = Field(0, ge=0)
    tie_embeddings: bool = True
    qk_norm: bool = True
    rope_theta: float = Field(10_000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    max_seq_len: int = Field(256, ge=2)
    init_std: float = Field(0.02, gt=0)
    moe: MoEConfig = MoEConfig()

    @model_validator(mode="after")
    def _heads_fit(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"train.model.d_model = {self.d_model} is not divisible by n_heads = {self.n_heads}"
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"train.model.n_heads = {self.n_heads} is not divisible by n_kv_heads = {self.n_kv_heads}"
            )
        return self


class OptimConfig(Section):
    lr: float = Field(3e-3, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="cosine floor as a fraction of lr")
    warmup_steps: int = Field(20, ge=0)
    decay_fraction: float = Field(
        0.25,
        gt=0,
        le=1,
        description="share of the post-warmup steps spent in the cosine decay; the LR is held "
        "at its peak before it (warmup-stable-decay). 1 = plain cosine",
    )
    weight_decay: float = Field(0.1, ge=0)
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.95, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)
    grad_clip: float = Field(1.0, ge=0, description="0 disables clipping")


class ParallelConfig(Section):
    """How the ``devices × num_nodes`` processes split the work (``strategy: model_parallel``).

    The world is a ``data_parallel × expert_parallel`` device mesh. Every rank reads its own
    slice of the global batch; the dense weights are replicated over the whole world (or sharded
    over it by FSDP2), and each MoE layer's experts are split into ``expert_parallel`` contiguous groups,
    one per rank of an expert-parallel group, with tokens sent to them by all-to-all.
    """

    data_parallel: int | Literal["auto"] = Field(
        "auto", description="mesh rows; auto = world size / expert_parallel"
    )
    expert_parallel: int = Field(1, ge=1, description="ranks sharing one copy of the experts")
    sharding: Literal["none", "fsdp2"] = Field(
        "none", description="fsdp2: fully_shard the dense weights over all ranks"
    )
    activation_checkpointing: bool = Field(
        False, description="recompute each block in the backward instead of storing activations"
    )

    @model_validator(mode="after")
    def _positive(self) -> ParallelConfig:
        if self.data_parallel != "auto" and self.data_parallel < 1:
            raise ValueError(
                f"train.runtime.parallel.data_parallel = {self.data_parallel}: expected 'auto' "
                "or >= 1"
            )
        return self


class RuntimeConfig(Section):
    """How a run executes, never what it trains: a checkpoint resumes under other values of any
    of these (another backend, precision, device count or parallel layout), which is why the
    run fingerprint leaves this section out."""

    backend: Literal["auto", "reference", "torch", "triton"] = Field(
        "auto",
        description="MoE routing/dispatch/expert implementation; auto = triton on CUDA, torch "
        "otherwise (pipeline/model/backends.py)",
    )
    precision: Literal["32-true", "bf16-mixed", "bf16-true"] = Field(
        "32-true", description="bf16 only where the CPU/GPU has native bf16 matmuls"
    )
    compile: bool = False
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "auto"
    devices: int | Literal["auto"] = 1
    num_nodes: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "model_parallel"] = "auto"
    parallel: ParallelConfig = ParallelConfig()
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between last.ckpt saves")
    resume: Literal["auto", "never"] = "auto"
    nonfinite_grad: Literal["stop", "skip"] = Field(
        "stop",
        description="a non-finite gradient norm with a finite loss (e.g. a bf16 overflow): stop "
        "the run, or skip that optimizer step (pipeline/train/callbacks.py)",
    )

    def world_size(self) -> int | None:
        """``devices × num_nodes``, or None while ``devices: auto`` (known at launch only)."""
        return None if self.devices == "auto" else self.devices * self.num_nodes


class MonitorConfig(Section):
    """What is measured during training; none of it changes the trained weights."""

    log_every: int = Field(10, ge=1, description="optimizer steps between logged metrics")
    val_every: int = Field(50, ge=1, description="optimizer steps between validations")
    val_batches: int = Field(20, ge=1, description="global micro-batches of validation windows")
    peak_flops: float | None = Field(
        None, gt=0, description="per-device peak for MFU; null = measure"
    )
    dead_expert_load: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="routing health: an expert is dead when its share of a layer's assignments "
        "over the steps since the last log is below this fraction of the mean share",
    )
    snapshot_fractions: list[float] = Field(
        [0.1, 0.5],
        description="fractions of max_steps after which the weights are kept in models/snapshots/ "
        "(evaluate's router saturation compares their routing with the final model's); [] = none",
    )

    @model_validator(mode="after")
    def _fractions_increase_inside_training(self) -> MonitorConfig:
        fractions = self.snapshot_fractions
        if any(not 0 < f < 1 for f in fractions) or fractions != sorted(set(fractions)):
            raise ValueError(
                f"train.monitor.snapshot_fractions = {fractions}: expected increasing fractions "
                "strictly between 0 and 1 (the final model is the end of training), e.g. [0.1, 0.5]"
            )
        return self


class RoutingGuardConfig(Section):
    """Warns or stops when a MoE layer's routing collapses, checked at each logging step
    (pipeline/train/routing_health.py). A limit of null is not checked. The defaults stay
    clear of healthy runs (bench/RESULTS.md, "Router × balance on real text": MaxVio at most 0.39
    there) and catch a collapse."""

    max_vio: float | None = Field(
        2.0,
        gt=0,
        description="largest tolerated MaxVio of a step (max over experts of (load - mean) / "
        "mean; at most num_experts / top_k - 1)",
    )
    dead_fraction: float | None = Field(
        0.25, ge=0, lt=1, description="largest tolerated fraction of dead experts in a layer"
    )
    patience_steps: int = Field(
        50,
        ge=0,
        description="optimizer steps a limit must stay exceeded, at every logging step, "
        "before the guard acts",
    )
    action: Literal["warn", "stop"] = "warn"


class InitConfig(Section):
    """Where the weights start: from scratch (``upcycle_from: null``) or sparse-upcycled from a
    dense model (:mod:`pipeline.model.upcycling`: attention, norms and embeddings copied, every
    expert a copy of its layer's dense MLP). Part of the run: the run fingerprint includes it
    and the dense weights' SHA-256 (:func:`pipeline.train.outputs.run_fingerprint`). A resumed
    run restores its checkpoint and never reads the dense model again."""

    upcycle_from: str | None = Field(
        None,
        min_length=1,
        description="a model directory as the train stage writes it (model.safetensors + "
        "model_config.json) whose MLPs are dense; null = from scratch",
    )
    method: Literal["copy", "drop"] = Field(
        "copy",
        description="copy: every expert = the dense MLP; drop: then re-initialise a drop_ratio "
        "share of each expert's hidden units, a different share per expert (drop-upcycling, "
        "arXiv:2502.19261)",
    )
    drop_ratio: float = Field(
        0.5, ge=0, le=1, description="method drop: share of each expert's hidden units redrawn"
    )
    router_init: Literal["normal", "zeros"] = Field(
        "normal",
        description="the routers' weights: normal = N(0, init_std) as from scratch; zeros = "
        "uniform scores at step 0 (ties broken by expert id)",
    )

    @model_validator(mode="after")
    def _drop_needs_a_source(self) -> InitConfig:
        if self.method == "drop" and self.upcycle_from is None:
            raise ValueError(
                "train.init.method = 'drop' re-initialises part of upcycled experts, but "
                "train.init.upcycle_from is null (from scratch): set upcycle_from to a dense "
                "model directory, or method: copy"
            )
        return self


class TrainConfig(Section):
    """What is trained (model, its initial weights, optimizer, data geometry, length: the run's
    identity) plus how it runs (``runtime``), what is measured (``monitor``) and when a
    collapsing router stops it (``routing_guard``)."""

    model: ModelConfig = ModelConfig()
    init: InitConfig = InitConfig()
    optim: OptimConfig = OptimConfig()
    seq_len: int = Field(256, ge=2, description="tokens per training window")
    micro_batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    max_steps: int = Field(300, ge=1, description="optimizer steps")
    runtime: RuntimeConfig = RuntimeConfig()
    monitor: MonitorConfig = MonitorConfig()
    routing_guard: RoutingGuardConfig = RoutingGuardConfig()

    @model_validator(mode="after")
    def _window_fits(self) -> TrainConfig:
        if self.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"train.seq_len = {self.seq_len} exceeds train.model.max_seq_len = {self.model.max_seq_len}"
            )
        check_parallel_layout(self)
        return self


#: The ``train`` sections that do not define the run: a run resumes across changes to them.
NOT_THE_RUN = ("runtime", "monitor", "routing_guard")


def check_parallel_layout(cfg: TrainConfig, world: int | None = None) -> tuple[int, int] | None:
    """Cross-field rules of ``train.parallel``; returns ``(data_parallel, expert_parallel)``
    once the world size is known (from the params, or from the launcher via ``world``)."""
    runtime = cfg.runtime
    par, experts = runtime.parallel, cfg.model.moe.num_experts
    if experts % par.expert_parallel:
        raise ValueError(
            f"train.runtime.parallel.expert_parallel = {par.expert_parallel} must divide "
            f"train.model.moe.num_experts = {experts}"
        )
    needs_mesh = par.expert_parallel > 1 or par.sharding != "none"
    if needs_mesh and runtime.strategy != "model_parallel":
        raise ValueError(
            f"train.runtime.parallel (expert_parallel = {par.expert_parallel}, sharding = "
            f"{par.sharding!r}) needs train.runtime.strategy: model_parallel, got "
            f"{runtime.strategy!r}"
        )
    world = world or runtime.world_size()
    if world is None:
        return None
    dp = world // par.expert_parallel if par.data_parallel == "auto" else par.data_parallel
    if dp * par.expert_parallel != world:
        raise ValueError(
            f"train.runtime.parallel: data_parallel ({par.data_parallel}) × expert_parallel "
            f"({par.expert_parallel}) must equal the world size devices × num_nodes = {world}"
        )
    return dp, par.expert_parallel


# --------------------------------------------------------------------------- evaluate
LOCAL_TASKS = ("agreement", "entity_cloze", "counting")


class GenerationConfig(Section):
    prompts: list[str] = ["Once upon a time", "Tom had 3 red apples.", '"Where is the ball?" asked']
    max_new_tokens: int = Field(48, ge=1)
    temperature: float = Field(0.8, ge=0, description="0 = greedy")
    top_k: int | None = Field(50, ge=1)


class EvaluateConfig(Section):
    tasks: list[str] = Field(
        list(LOCAL_TASKS), description="the generated benchmark tasks to run (lm-eval, offline)"
    )
    extra_tasks: list[str] = Field(
        [],
        description="standard lm-eval tasks or groups (arc_easy, lambada_openai, blimp, ...), "
        "run with lm-eval's own definitions; datasets from the Hub or datasets_mirror",
    )
    datasets_mirror: str | None = Field(
        None,
        description="a directory holding the extra tasks' datasets in the Hub's layout, "
        "<dir>/<hub id>/ (e.g. <dir>/allenai/ai2_arc); null = the Hub (or its local cache)",
    )
    model: Literal["native", "hf"] = Field(
        "native", description="evaluate the project's model (native) or its HF export (hf)"
    )
    limit: int | None = Field(None, ge=1, description="items per task; null = all")
    batch_size: int = Field(16, ge=1)
    perplexity_max_tokens: int | None = Field(
        None, ge=1, description="tokens per split for perplexity; null = the whole split"
    )
    routing_max_tokens: int = Field(32_768, ge=1, description="test tokens for routing analysis")
    routing_snapshot_tokens: int = Field(
        8_192,
        ge=1,
        description="router saturation: test tokens each training snapshot routes (a forward "
        "pass each; the first of the routing_max_tokens, at most all of them)",
    )
    routing_vocab_tokens: int = Field(
        50, ge=1, description="vocabulary specialisation: the most frequent token ids analysed"
    )
    routing_vocab_min_count: int = Field(
        20, ge=1, description="vocabulary specialisation: occurrences a token id needs"
    )
    generation: GenerationConfig = GenerationConfig()

    @model_validator(mode="after")
    def _known_local_tasks(self) -> EvaluateConfig:
        unknown = [t for t in self.tasks if t not in LOCAL_TASKS]
        if unknown:
            raise ValueError(
                f"evaluate.tasks: unknown task(s) {unknown}; the generated tasks are "
                f"{list(LOCAL_TASKS)} (standard lm-eval tasks go in evaluate.extra_tasks)"
            )
        return self


# --------------------------------------------------------------------------- card
class CardConfig(Section):
    model_name: str = Field(
        "moe-pipeline-tiny",
        pattern=r"^[^/:]+$",
        description="the card's model name and the MLflow registered model's (no '/' or ':')",
    )
    training_data: str | None = Field(
        None, description="what the corpus is, its source and license, for the card's Training data"
    )
    license: str = "apache-2.0"
    language: list[str] = ["en"]
    tags: list[str] = ["moe", "mixture-of-experts", "text-generation", "moe-pipeline"]
    export_dtype: Literal["float32", "bfloat16"] = "float32"


# --------------------------------------------------------------------------- root
class Params(Section):
    seed: int = Field(1234, ge=0, lt=2**32)
    prepare: PrepareConfig = PrepareConfig()
    tokenize: TokenizeConfig = TokenizeConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    card: CardConfig = CardConfig()


def flatten_keys(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings (params, a config dump) as ``{"a.b.c": value}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _describe(error: dict[str, Any], source: str) -> str:
    """One line per pydantic error: ``file: key = value: expected ...``."""
    key = ".".join(str(part) for part in error["loc"]) or "<root>"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{source}: unknown key {key!r} (value {error['input']!r}); check the spelling"
    if kind == "missing":
        return f"{source}: missing key {key!r}"
    message = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"{source}: {key}: {message}"
    return f"{source}: {key} = {error['input']!r}: expected {message[0].lower()}{message[1:]}"


def parse_params(data: Any, source: str = "params.yaml") -> Params:
    """Validate an already-loaded mapping; raise :class:`ConfigError` naming each bad key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: expected a mapping at the top level, got {type(data).__name__}"
        )
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, source) for err in exc.errors()]
        raise ConfigError("invalid parameters:\n  " + "\n  ".join(lines)) from None


def load_params(path: Path | str = PARAMS_FILE) -> Params:
    """Read and validate ``params.yaml``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the repository root)") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return parse_params(data, source=str(path))
