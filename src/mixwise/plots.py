"""Figures drawn headless (matplotlib's `Agg` canvas, no pyplot state): one heatmap drawer for every matrix mixwise
shows — DataProphet's M(source → target), ICONS's top-set overlaps, CADC's subtask similarity, the report's maps —
saved as PNG files or embedded in the HTML report as data URIs.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .extras import require

__all__ = [
    "RUN_COLOURS",
    "draw_heatmap",
    "figure",
    "figure_data_uri",
    "grouped_bars_figure",
    "heatmap",
    "heatmap_figure",
    "heatmaps_figure",
    "save_figure",
    "small_multiples_figure",
]

# one colour per compared run, the same in every chart of a report
RUN_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C"]


def figure(width: float, height: float) -> Any:
    """A matplotlib `Figure` on an `Agg` canvas (no display, no global pyplot state)."""
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plots").FigureCanvasAgg  # matplotlib is optional
    Figure = require("matplotlib.figure", "plots").Figure
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def heatmap_figure(
    values: Any,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    annotate: bool = True,
    cell_format: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    colorbar_label: str | None = None,
    separators: Sequence[float] = (),
) -> Any:
    """A heatmap of `values` (`len(rows) × len(cols)`): rows on the y axis, columns on the x axis, each cell
    annotated (up to 400 cells) with `cell_format` (default: two decimals, two significant digits below 0.01) in a
    colour readable on its background. `separators` draws lines between groups (after those row/column positions)."""
    values = np.asarray(values, dtype=np.float64)
    n_rows, n_cols = values.shape
    if (n_rows, n_cols) != (len(rows), len(cols)):
        raise ValueError(f"a {values.shape} matrix with {len(rows)} row and {len(cols)} column labels")
    fig = figure(1.8 + 0.75 * n_cols, 1.4 + 0.5 * n_rows)
    ax = fig.add_subplot()
    draw_heatmap(
        ax, values, rows, cols, title, xlabel, ylabel, annotate, cell_format, vmin, vmax, cmap, colorbar_label,
        separators,
    )  # fmt: skip
    fig.tight_layout()
    return fig


def draw_heatmap(
    ax: Any,
    values: Any,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    annotate: bool = True,
    cell_format: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    colorbar_label: str | None = None,
    separators: Sequence[float] = (),
) -> None:
    """[`heatmap_figure`]'s drawing on an existing matplotlib `Axes`."""
    values = np.asarray(values, dtype=np.float64)
    n_rows, n_cols = values.shape
    fig = ax.figure
    im = ax.imshow(values, cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(n_cols), list(cols), rotation=45, ha="right")
    ax.set_yticks(range(n_rows), list(rows))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=colorbar_label)
    if annotate and values.size <= 400:
        finite = values[np.isfinite(values)]
        lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
        hi = vmax if vmax is not None else (finite.max() if finite.size else 0.0)
        mid = (lo + hi) / 2
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                text = cell_format.format(v) if cell_format else (f"{v:.2g}" if abs(v) < 0.01 else f"{v:.2f}")
                colour = "black" if np.isfinite(v) and v > mid else "white"
                ax.text(j, i, text, ha="center", va="center", fontsize=7, color=colour)
    for b in separators:
        ax.axhline(b, color="black", linewidth=1)
        ax.axvline(b, color="black", linewidth=1)


def heatmaps_figure(panels: Sequence[dict[str, Any]], ncols: int = 3) -> Any:
    """Several heatmaps side by side: each panel is [`draw_heatmap`]'s keywords (`values`, `rows`, `cols`,
    `title`, ...)."""
    n = len(panels)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    shape = np.asarray(panels[0]["values"]).shape
    fig = figure(ncols * (2.2 + 0.6 * shape[1]), nrows * (1.6 + 0.45 * shape[0]))
    for k, panel in enumerate(panels):
        draw_heatmap(fig.add_subplot(nrows, ncols, k + 1), **panel)
    fig.tight_layout()
    return fig


def grouped_bars_figure(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    title: str = "",
    ylabel: str = "",
    colours: Sequence[str] | None = None,
    hatches: dict[str, str] | None = None,
    labels: dict[str, Sequence[str]] | None = None,
) -> Any:
    """Bars per group (x axis), one bar per series side by side; `labels[series]` annotates its bars."""
    fig = figure(max(5.0, 0.35 * len(groups) * max(1, len(series)) + 2), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(series))
    xs = np.arange(len(groups))
    for k, (name, values) in enumerate(series.items()):
        colour = (colours or RUN_COLOURS)[k % len(colours or RUN_COLOURS)]
        bars = ax.bar(
            xs + (k - (len(series) - 1) / 2) * width, values, width, label=name, color=colour,
            hatch=(hatches or {}).get(name), edgecolor="white",
        )  # fmt: skip
        for bar, text in zip(bars, (labels or {}).get(name, [])):
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                        fontsize=7)  # fmt: skip
    ax.set_xticks(xs, list(groups), rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def small_multiples_figure(
    panels: dict[str, dict[str, Sequence[tuple[float, float]]]],
    xlabel: str = "step",
    ylabel: str = "",
    colours: dict[str, str] | None = None,
    ncols: int = 3,
) -> Any:
    """One small chart per panel (`{panel: {line: [(x, y), ...]}}`), lines coloured by name (`colours`) and
    labelled in a legend on the first panel."""
    names = list(panels)
    ncols = max(1, min(ncols, len(names)))
    nrows = -(-len(names) // ncols)
    fig = figure(3.3 * ncols, 2.5 * nrows + 0.4)
    for k, panel in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        for j, (line, points) in enumerate(panels[panel].items()):
            xs, ys = zip(*points)
            colour = (colours or {}).get(line, RUN_COLOURS[j % len(RUN_COLOURS)])
            ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=line, color=colour)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        if k == 0 and len(panels[panel]) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 120) -> str:
    """Write `fig` as a PNG file (creating its directory); returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def figure_data_uri(fig: Any, dpi: int = 100) -> str:
    """`fig` as a `data:image/png;base64,...` URI, for a self-contained HTML page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def heatmap(values: Any, rows: Sequence[str], cols: Sequence[str], path: str | os.PathLike, **kwargs: Any) -> str:
    """[`heatmap_figure`] written to `path` as a PNG; returns the path."""
    return save_figure(heatmap_figure(values, rows, cols, **kwargs), path)
