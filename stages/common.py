"""What every stage entry point shares: logging set-up and turning bad input into exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError

EXIT_BAD_INPUT = 2


def run_main(stage: str, body: Callable[[], object]) -> None:
    """Run ``body``; a :class:`PipelineError` becomes one clear line on stderr and exit code 2."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    try:
        body()
    except PipelineError as exc:
        print(f"[{stage}] error: {exc}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)


def require(path: Path, stage: str) -> Path:
    """``path``, or a :class:`PipelineError` naming the stage that writes it."""
    if not path.exists():
        raise PipelineError(f"{path}: not found (run the {stage} stage)")
    return path
