"""Regenerate tests/assets/golden_loss_tiny.json: the per-step losses of the tiny config.

    python tests/train/make_golden.py

Run it only when a change is meant to alter the numbers (model init, loss, optimizer, data
order), and say so in the commit: test_golden.py exists to catch the changes that are not meant.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import tiny  # this script's own directory is on sys.path
import torch

ASSET = Path(__file__).resolve().parents[1] / "assets" / "golden_loss_tiny.json"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = tiny.write_tokens(Path(tmp))
        losses = tiny.losses(tiny.run(paths, tiny.params(**tiny.GOLDEN)))
    record = {
        "regenerate": "python tests/train/make_golden.py",
        "params": tiny.merge(tiny.TINY, {"train": tiny.GOLDEN}),
        "torch": torch.__version__,
        "losses": losses,
    }
    ASSET.write_text(json.dumps(record, indent=2) + "\n")
    print(
        f"wrote {ASSET}: {len(losses)} steps, {losses[0]:.4f} -> {losses[-1]:.4f}", file=sys.stderr
    )


if __name__ == "__main__":
    main()
