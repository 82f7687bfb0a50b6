"""Run the tiny training under DDP on CPU processes; rank zero writes the loss history as JSON.

    python tests/train/ddp_worker.py ROOT OUT.json DEVICES MICRO_BATCH

Lightning's launcher re-executes this script for ranks 1..DEVICES-1, so it must be a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tiny  # this script's own directory is on sys.path

from pipeline.paths import Paths


def main(root: str, out: str, devices: str, micro_batch: str) -> None:
    p = tiny.params(
        max_steps=4,
        micro_batch_size=int(micro_batch),
        model={"moe": {"router": "sigmoid_bias", "bias_update_rate": 0.01, "aux_loss_weight": 0.0}},
        runtime={"devices": int(devices), "strategy": "ddp"},
        monitor={"log_every": 1},
    )
    result = tiny.run(Paths(root=Path(root)), p)
    if result.is_global_zero:
        Path(out).write_text(json.dumps(result.history))


if __name__ == "__main__":
    main(*sys.argv[1:])
