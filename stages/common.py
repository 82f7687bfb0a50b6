"""What every stage entry point shares: logging set-up and turning bad input into exit code 2."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import PipelineError

EXIT_BAD_INPUT = 2
log = logging.getLogger(__name__)


def run_main(
    stage: str, body: Callable[[], object], *, process_setup: Callable[[], str] | None = None
) -> None:
    """Run ``body``; a :class:`PipelineError` becomes one clear line on stderr and exit code 2.

    ``process_setup``: a process-wide setting for this stage's process, applied (and the line it
    returns logged) before ``body``. Entry points apply such settings, never ``main``, which a
    user's own program may call: the train and evaluate stages run the model step after step and
    keep the host memory a step frees (:func:`pipeline.host_memory.keep_freed_host_memory`).
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    if process_setup is not None:
        log.info(process_setup())
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
