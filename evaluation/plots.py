"""Heatmap PNGs for the routing analysis (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a stage runs headless, under DVC or on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.io import atomic_path  # noqa: E402

_ANNOTATE_MAX_CELLS = 400  # beyond this, numbers in the cells are unreadable


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    colorbar_label: str,
    path: Path,
) -> None:
    """Write ``matrix`` (rows × columns) as a PNG heatmap, values printed when they fit."""
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * cols + 2.5), max(2.5, 0.4 * rows + 1.5)))
    try:
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(cols), labels=list(col_labels))
        ax.set_yticks(range(rows), labels=list(row_labels))
        ax.set_xlabel("expert")
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label=colorbar_label)
        if rows * cols <= _ANNOTATE_MAX_CELLS:
            high = np.nanmax(matrix) if matrix.size else 0.0
            for r in range(rows):
                for c in range(cols):
                    colour = "black" if matrix[r, c] > 0.6 * high else "white"
                    ax.text(
                        c,
                        r,
                        f"{matrix[r, c]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(fig)
