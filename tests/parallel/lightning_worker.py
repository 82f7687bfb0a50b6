"""Train the tiny set-up of tests/train through Lightning; rank zero writes the history.

    python tests/parallel/lightning_worker.py ROOT OUT.json DEVICES MICRO_BATCH STRATEGY \
        PARALLEL_JSON [MAX_STEPS [STOP_AFTER [KILL_IN_SAVE [TRAIN_JSON]]]]

``PARALLEL_JSON`` is the ``train.parallel`` section; ``TRAIN_JSON`` more ``train`` keys (merged
into the tiny set-up's); ``STOP_AFTER`` ends the run cleanly after
that optimizer step (its checkpoint written), as a preempted job would leave it;
``KILL_IN_SAVE`` SIGKILLs the process in the middle of the n-th save of ``last.ckpt``.
Lightning's launcher re-executes this script for ranks 1..DEVICES-1, so it must be a file.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import tiny  # noqa: E402

from pipeline.paths import Paths  # noqa: E402
from pipeline.train.trainer import train  # noqa: E402


class GradNorms(Logger):
    """Keeps the logged ``train/grad_norm`` per step (not in the history)."""

    name, version = "grad_norms", "0"

    def __init__(self):
        super().__init__()
        self.by_step: dict[int, float] = {}

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if "train/grad_norm" in metrics:
            self.by_step[step] = metrics["train/grad_norm"]


class StopAfter(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            trainer.should_stop = True


def kill_in_save(n: int) -> None:
    """Fault injection: die after DCP has written the tensors of the n-th ``last.ckpt`` and
    before Lightning writes its ``meta.pt`` (wraps the function ModelParallelStrategy calls)."""
    import lightning.pytorch.strategies.model_parallel as model_parallel

    write, saves = model_parallel._distributed_checkpoint_save, []

    def write_then_die(state, path) -> None:
        write(state, path)
        saves.extend(["last"] if "last.ckpt" in path.name else [])
        if len(saves) == n:
            os.kill(os.getpid(), signal.SIGKILL)

    model_parallel._distributed_checkpoint_save = write_then_die


def main(
    root: str,
    out: str,
    devices: str,
    micro: str,
    strategy: str,
    parallel: str,
    steps: str = "4",
    stop_after: str = "0",
    kill_at_save: str = "0",
    train_json: str = "{}",
):
    p = tiny.params(
        **json.loads(train_json),
        max_steps=int(steps),
        micro_batch_size=int(micro),
        runtime={
            "devices": int(devices),
            "strategy": strategy,
            "parallel": json.loads(parallel),
            "checkpoint_every": 2,
        },
        monitor={"log_every": 1, "val_every": 2},
    )
    if int(kill_at_save):
        kill_in_save(int(kill_at_save))
    callbacks = [StopAfter(int(stop_after))] if int(stop_after) else []
    norms = GradNorms()
    paths = Paths(root=Path(root))
    result = train(
        p, paths, tiny.RUN_KEY, logger=norms, progress_bar=False, extra_callbacks=callbacks
    )
    if result.is_global_zero:
        grad_norms = [norms.by_step[step] for step in sorted(norms.by_step)]
        out_json = {"history": result.history, "metrics": result.metrics, "grad_norm": grad_norms}
        Path(out).write_text(json.dumps(out_json))


if __name__ == "__main__":
    main(*sys.argv[1:])
