"""ICONS's result: per-task influence, votes and the selection over a mixture's pool, saved and plotted."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from ..extras import available
from ..fingerprint import short_hash
from ..signals.influence import InfluenceScores
from ..transforms import add_columns
from .aggregation import Selection, top_set_overlap, vote_counts, vote_histogram

__all__ = ["ICONSResult", "plot_result"]


@dataclass
class ICONSResult:
    """Scores, votes and the selection of one ICONS run over a mixture's pool (rows = `mixture.dataset` order)."""

    influence: InfluenceScores
    selection: Selection
    names: list[str]
    offsets: dict[str, int]
    sizes: dict[str, int]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    work_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    p_vote: float | None = None
    target_skipped: list[dict[str, Any]] = field(default_factory=list)
    groups: np.ndarray | None = None  # duplicate-group id per pool row (dedup on), else None

    @property
    def n_select(self) -> int:
        return len(self.selection.order)

    @property
    def votes(self) -> np.ndarray:
        """Votes per pool row (computed with `p_vote` also when another aggregator selected the rows)."""
        if self.selection.votes is not None:
            return self.selection.votes
        return vote_counts(self.influence.scores, self.p_vote)[0]

    def rows_per_source(self) -> dict[str, list[int]]:
        """Selected row ids per source (sorted)."""
        rows = self.selection.rows
        out = {}
        for n in self.names:
            lo, hi = self.offsets[n], self.offsets[n] + self.sizes[n]
            out[n] = (rows[(rows >= lo) & (rows < hi)] - lo).tolist()
        return out

    def columns(self) -> dict[str, np.ndarray]:
        """`icons_votes`, `icons_selected` and `icons_score_<task>` per pool row (NaN score: skipped row)."""
        selected = np.zeros(len(self.influence.scores), bool)
        selected[self.selection.order] = True
        cols = {"icons_votes": self.votes.astype(np.int64), "icons_selected": selected}
        for k, task in enumerate(self.influence.tasks):
            cols[f"icons_score_{task}"] = self.influence.scores[:, k].astype(np.float32)
        return cols

    def add_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """`dataset` (the mixture's concatenated pool, same row order) with the [`columns`] added, each with an
        explicit deterministic fingerprint (so that `datasets` caching works)."""
        config = {"scores": short_hash(self.influence.scores, 16), **self.config}
        return add_columns(dataset, self.columns(), "icons", config, what="the ICONS scores")

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the manifest's `extra`."""
        n_tasks = len(self.influence.tasks)
        votes = self.votes
        info: dict[str, Any] = {
            "aggregator": self.selection.method,
            "signal": self.config.get("signal"),
            "tasks": self.influence.tasks,
            "subtasks": self.influence.subtasks,
            "n_select": self.n_select,
            "p_vote": self.p_vote,
            "vote_thresholds": self.selection.thresholds or vote_counts(self.influence.scores, self.p_vote)[1],
            "vote_histogram": vote_histogram(votes, n_tasks, self.selection.order),
            "top_set_overlap": top_set_overlap(self.influence.scores, self.n_select).round(6).tolist(),
            "checkpoints": self.checkpoints,
            "feature_skipped": {"count": len(self.skipped), "rows": self.skipped[:100]},
            "target_feature_skipped": {"count": len(self.target_skipped), "rows": self.target_skipped[:100]},
            "tie_break": "votes desc, then mean within-task percentile rank desc, then row id asc",
            "dedup": self.selection.info.get("dedup"),
            "coverage": self.selection.info.get("coverage"),
        }
        if self.work_dir:
            info["work_dir"] = self.work_dir
        return info

    def save(self, out_dir: str, plots: bool = True) -> list[str]:
        """Write `icons_scores.npz` (scores, votes, selected mask, tasks) and the plots; returns the paths."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "icons_scores.npz")
        cols = self.columns()
        np.savez(
            path,
            scores=self.influence.scores,
            votes=cols["icons_votes"],
            selected=cols["icons_selected"],
            order=self.selection.order,
            tasks=np.array(self.influence.tasks),
        )
        paths = [path]
        if plots and available("matplotlib", "the ICONS plots"):
            paths += plot_result(self, out_dir)
        return paths


def plot_result(result: ICONSResult, out_dir: str) -> list[str]:
    """`vote_histogram.png` (rows per number of votes, all vs selected) and `overlap_heatmap.png` (share of each
    task's top set shared with every other task's, ICONS Fig. 3)."""
    from ..plots import figure, heatmap, save_figure

    tasks = result.influence.tasks
    k = len(tasks)
    hist = vote_histogram(result.votes, k, result.selection.order)
    fig = figure(6, 4)
    ax = fig.add_subplot()
    xs = np.arange(k + 1)
    ax.bar(xs - 0.2, hist["all"], width=0.4, label="pool")
    ax.bar(xs + 0.2, hist["selected"], width=0.4, label="selected")
    ax.set_xticks(xs)
    ax.set_xlabel("votes (tasks for which the row is in the top p_vote)")
    ax.set_ylabel("rows")
    ax.set_title(f"ICONS votes ({result.selection.method}, {result.n_select} selected)")
    ax.legend()
    fig.tight_layout()
    paths = [save_figure(fig, os.path.join(out_dir, "vote_histogram.png"), dpi=100)]
    overlap = top_set_overlap(result.influence.scores, result.n_select)
    paths.append(
        heatmap(
            overlap * 100,
            tasks,
            tasks,
            os.path.join(out_dir, "overlap_heatmap.png"),
            title="top-set overlap (%)",
            xlabel="task whose top set is compared",
            ylabel="task",
            cell_format="{:.0f}",
            vmin=0,
            vmax=100,
        )
    )
    return paths
