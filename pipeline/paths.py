"""Where each stage reads and writes, relative to the repository root.

The single contract between the stage modules and ``dvc.yaml``: change a location here and there
together. Tests build ``Paths(root=tmp_path)`` to run stages in isolation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Paths:
    root: Path = Path(".")

    # prepare
    @property
    def prepared_dir(self) -> Path:
        return self.root / "data" / "prepared"

    def parquet(self, split: str) -> Path:
        return self.prepared_dir / f"{split}.parquet"

    @property
    def prepare_stats(self) -> Path:
        return self.prepared_dir / "stats.json"

    @property
    def prepare_run(self) -> Path:
        return self.prepared_dir / "run.json"

    @property
    def benchmarks_dir(self) -> Path:
        return self.root / "data" / "benchmarks"

    # tokenize
    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "data" / "tokenizer"

    @property
    def tokens_dir(self) -> Path:
        return self.root / "data" / "tokens"

    def tokens(self, split: str) -> Path:
        return self.tokens_dir / f"{split}.bin"

    @property
    def tokenize_run(self) -> Path:
        return self.tokens_dir / "run.json"

    @property
    def tokenize_metrics(self) -> Path:
        return self.root / "metrics" / "tokenize.json"

    # evaluate
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
