"""Train the tiny set-up of tests/train through Lightning; rank zero writes the history.

    python tests/parallel/lightning_worker.py ROOT OUT.json DEVICES MICRO_BATCH STRATEGY EP [RESUME_STEPS]

Lightning's launcher re-executes this script for ranks 1..DEVICES-1, so it must be a file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
import tiny  # noqa: E402

from pipeline.paths import Paths  # noqa: E402


def main(root: str, out: str, devices: str, micro: str, strategy: str, ep: str, steps: str = "4"):
    p = tiny.params(
        max_steps=int(steps),
        devices=int(devices),
        strategy=strategy,
        parallel={"expert_parallel": int(ep)},
        micro_batch_size=int(micro),
        log_every=1,
        val_every=2,
        checkpoint_every=2,
    )
    result = tiny.run(Paths(root=Path(root)), p)
    if result.is_global_zero:
        Path(out).write_text(json.dumps({"history": result.history, "metrics": result.metrics}))


if __name__ == "__main__":
    main(*sys.argv[1:])
