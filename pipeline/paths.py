"""Where every stage reads and writes, relative to the repository root: the one path registry.

The contract between the stage modules and ``dvc.yaml``: change a location here and there
together (``tests/test_dvc_wiring.py`` checks that ``dvc.yaml`` names these files). Tests build
``Paths(root=tmp_path)`` to run stages in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class ModelFiles:
    """The trained model as the train stage writes it: the weights and the spec they belong
    to (``pipeline.model_io`` reads and writes both)."""

    weights: Path
    config: Path

    @classmethod
    def in_dir(cls, directory: Path) -> ModelFiles:
        return cls(directory / "model.safetensors", directory / "model_config.json")


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    # ------------------------------------------------------------------ prepare
    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    def prepared_split(self, split: str) -> Path:
        """A split's numbered Parquet shards and their manifest (``pipeline.data.prepared``)."""
        return self.prepared_dir / split

    @property
    def prepare_staging(self) -> Path:
        """Work in progress of ``prepare`` (its shard jobs' parts and completion markers)."""
        return self.prepared_dir / ".staging"

    @property
    def prepare_stats(self) -> Path:
        return self.prepared_dir / "stats.json"

    @property
    def word_categories(self) -> Path:
        """The part of speech of every word the corpus source knows (the routing analysis)."""
        return self.prepared_dir / "word_categories.json"

    @property
    def prepare_run(self) -> Path:
        return self.prepared_dir / "run.json"

    @property
    def benchmarks_dir(self) -> Path:
        return self.root / "data" / "benchmarks"

    def benchmark(self, task: str, split: str) -> Path:
        """One task's ``dev`` or ``test`` items."""
        return self.benchmarks_dir / split / f"{task}.jsonl"

    # ------------------------------------------------------------------ tokenize
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def tokenizer_file(self) -> Path:
        return self.tokenizer_dir / "tokenizer.json"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "data" / "tokens"

    def token_split(self, split: str) -> Path:
        """A split's numbered token shards and their manifest (``pipeline.data.shards``)."""
        return self.tokens_dir / split

    @property
    def tokenize_staging(self) -> Path:
        """Work in progress of ``tokenize`` (its shard jobs' shards and completion markers)."""
        return self.tokens_dir / ".staging"

    @property
    def tokenize_run(self) -> Path:
        return self.tokens_dir / "run.json"

    @property
    def tokenize_metrics(self) -> Path:
        return self.root / "metrics" / "tokenize.json"

    @property
    def tokenize_timing(self) -> Path:
        """The encoding's wall times and throughput: no stage depends on them."""
        return self.root / "metrics" / "tokenize_timing.json"

    # ------------------------------------------------------------------ train
    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def model_files(self) -> ModelFiles:
        return ModelFiles.in_dir(self.models_dir)

    @property
    def checkpoints_dir(self) -> Path:
        """One directory per training run (``checkpoint_dir``), kept between ``dvc repro`` runs."""
        return self.models_dir / "checkpoints"

    def checkpoint_dir(self, run_key: str) -> Path:
        return self.checkpoints_dir / run_key

    def last_checkpoint(self, run_key: str) -> Path:
        return self.checkpoint_dir(run_key) / "last.ckpt"

    @property
    def train_run(self) -> Path:
        return self.models_dir / "run.json"

    @property
    def train_metrics(self) -> Path:
        return self.root / "metrics" / "train.json"

    @property
    def train_timing(self) -> Path:
        """The training's wall time, throughput and MFU: no stage depends on them."""
        return self.root / "metrics" / "train_timing.json"

    @property
    def train_plots_dir(self) -> Path:
        return self.root / "plots" / "train"

    @property
    def snapshots_dir(self) -> Path:
        """Weights kept during training (``train.monitor.snapshot_fractions``) for evaluate's
        router saturation: one :class:`ModelFiles` directory per fraction (:meth:`snapshot_files`)."""
        return self.models_dir / "snapshots"

    def snapshot_files(self, fraction: float) -> ModelFiles:
        """The weights after ``fraction`` of the training steps: ``snapshots/<percent>pct/``."""
        return ModelFiles.in_dir(self.snapshots_dir / f"{100 * fraction:g}pct")

    def snapshots(self) -> dict[float, ModelFiles]:
        """The snapshots on disk by fraction of training, in order (read from the directory
        names :meth:`snapshot_files` gives; anything else in the directory is ignored)."""
        found = {}
        for directory in sorted(self.snapshots_dir.glob("*pct")):
            try:
                found[float(directory.name.removesuffix("pct")) / 100] = directory
            except ValueError:
                continue
        return {fraction: ModelFiles.in_dir(found[fraction]) for fraction in sorted(found)}

    # ------------------------------------------------------------------ export
    @property
    def hf_dir(self) -> Path:
        """The Hugging Face model directory; the card stage adds its README.md and plots."""
        return self.models_dir / "hf"

    @property
    def export_run(self) -> Path:
        return self.models_dir / "export_run.json"

    # ------------------------------------------------------------------ evaluate
    @property
    def eval_metrics(self) -> Path:
        return self.root / "metrics" / "eval.json"

    @property
    def eval_generations(self) -> Path:
        return self.root / "metrics" / "generations.json"

    @property
    def eval_plots_dir(self) -> Path:
        return self.root / "plots" / "eval"

    @property
    def eval_run(self) -> Path:
        return self.root / "metrics" / "eval_run.json"

    # ------------------------------------------------------------------ card
    @property
    def card(self) -> Path:
        return self.hf_dir / "README.md"

    @property
    def card_plots_dir(self) -> Path:
        return self.hf_dir / "plots"

    @property
    def card_run(self) -> Path:
        return self.models_dir / "card_run.json"

    @property
    def dvc_lock(self) -> Path:
        return self.root / "dvc.lock"
