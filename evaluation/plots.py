"""PNGs for the routing analysis (matplotlib's Agg backend: no display needed), written
atomically, and the per-analysis output directories they go into."""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot: a stage runs headless, under DVC or on a cluster node

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.io import atomic_path  # noqa: E402

_ANNOTATE_MAX_CELLS = 400  # beyond this, numbers in the cells are unreadable
_DPI = 110


def fresh_dir(path: Path) -> Path:
    """``path`` as an empty directory: an analysis's files of an earlier run (a model with more
    layers, an analysis skipped this time) must not outlive it. DVC declares the directory, so
    it exists even when the analysis writes nothing."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    colorbar_label: str,
    path: Path,
    xlabel: str = "expert",
    ylabel: str | None = None,
    cell_text: np.ndarray | None = None,
) -> None:
    """Write ``matrix`` (rows × columns) as a PNG heatmap. Cells show ``cell_text`` or their
    value when they fit; NaN cells (undefined values) stay blank."""
    rows, cols = matrix.shape
    height = max(2.5, (0.4 if rows <= 20 else 0.25) * rows + 1.5)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * cols + 2.5), height))
    try:
        image = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0)
        ax.set_xticks(range(cols), labels=list(col_labels))
        ax.set_yticks(range(rows), labels=list(row_labels))
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.colorbar(image, ax=ax, label=colorbar_label)
        if rows * cols <= _ANNOTATE_MAX_CELLS:
            _annotate(ax, matrix, cell_text)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)


def _annotate(ax, matrix: np.ndarray, cell_text: np.ndarray | None) -> None:
    high = np.nanmax(matrix) if np.isfinite(matrix).any() else 0.0
    for (r, c), value in np.ndenumerate(matrix):
        if np.isnan(value):
            continue
        text = f"{value:.2f}" if cell_text is None else str(cell_text[r, c])
        colour = "black" if value > 0.6 * high else "white"
        ax.text(c, r, text, ha="center", va="center", fontsize=7, color=colour)


def line_plot(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    title: str,
    xlabel: str,
    ylabel: str,
    path: Path,
    reference: tuple[float, str] | None = None,
) -> None:
    """One marked line per ``series`` entry over ``x``, y from 0 to 1, with an optional
    horizontal ``(value, label)`` reference line."""
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    try:
        for label, y in series.items():
            ax.plot(x, y, marker="o", label=label)
        if reference is not None:
            ax.axhline(reference[0], color="grey", linestyle="--", label=reference[1])
        ax.set_ylim(0.0, 1.05)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=_DPI)
