"""Plots written to files (matplotlib, headless `Agg` backend): the DataProphet metric heatmap."""

from __future__ import annotations

import os

import numpy as np

from .tau import Matrix

__all__ = ["heatmap"]


def heatmap(
    matrix: Matrix,
    path: str | os.PathLike,
    title: str = "DataProphet M(source → target)",
    xlabel: str = "target",
    ylabel: str = "source (training data)",
    annotate: bool = True,
    cmap: str = "viridis",
) -> str:
    """Write `matrix` as a PNG heatmap (rows on the y axis, columns on the x axis, values in the cells).

    Returns the path written.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    values = np.asarray(matrix.values, dtype=np.float64)
    n_rows, n_cols = values.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.75 * n_cols, 1.4 + 0.5 * n_rows), dpi=120)
    try:
        im = ax.imshow(values, cmap=cmap, aspect="auto")
        ax.set_xticks(range(n_cols), matrix.cols, rotation=45, ha="right")
        ax.set_yticks(range(n_rows), matrix.rows)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if annotate and values.size <= 400:
            finite = values[np.isfinite(values)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
            for i in range(n_rows):
                for j in range(n_cols):
                    v = values[i, j]
                    colour = "black" if np.isfinite(v) and v > mid else "white"
                    ax.text(
                        j,
                        i,
                        f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}",
                        ha="center",
                        va="center",
                        fontsize=7,
                        color=colour,
                    )
        fig.tight_layout()
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
