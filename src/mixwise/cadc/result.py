"""CADC's result: capabilities, per-row trajectory influence and self-influence, the stages; saved and plotted."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from ..extras import available
from ..fingerprint import short_hash
from ..transforms import add_columns
from .curriculum import Curation, Discovery, assign

__all__ = ["CADCResult", "plot_result"]


@dataclass
class CADCResult:
    """Everything one CADC run found (rows = `mixture.dataset` order)."""

    discovery: Discovery
    influence: np.ndarray
    self_influence: np.ndarray  # (T, N)
    weights: list[float]
    curation: Curation
    stages: list[dict[str, Any]]
    checkpoints: list[dict[str, Any]]
    trajectory: bool
    config: dict[str, Any] = field(default_factory=dict)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    work_dir: str | None = None

    @property
    def capability(self) -> np.ndarray:
        return assign(self.influence)

    def columns(self) -> dict[str, np.ndarray]:
        """`cadc_capability` (index, -1: skipped row), `cadc_selected`, `cadc_stage` (-1: not selected),
        `cadc_self_influence` (`Σ_t w_t ‖g_z(θ_t)‖²`) and `cadc_influence_<ck>` per capability."""
        n = len(self.influence)
        stage = np.full(n, -1, np.int64)
        for s, k in enumerate(self.curation.order):
            stage[self.curation.rows[k]] = s
        si = np.asarray(self.weights) @ self.self_influence
        cols: dict[str, np.ndarray] = {
            "cadc_capability": self.capability,
            "cadc_selected": stage >= 0,
            "cadc_stage": stage,
            "cadc_self_influence": si.astype(np.float32),
        }
        for k, name in enumerate(self.discovery.names):
            cols[f"cadc_influence_{name}"] = self.influence[:, k].astype(np.float32)
        return cols

    def add_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """`dataset` (the mixture's pool, same row order) with the [`columns`], deterministic fingerprints."""
        config = {"scores": short_hash(self.influence, 16), **self.config}
        return add_columns(dataset, self.columns(), "cadc", config, what="the CADC scores")

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the plan's `extra` (read by the report)."""
        d = self.discovery
        pools = np.bincount(self.capability[self.capability >= 0], minlength=d.n_capabilities).tolist()
        info = {
            "capabilities": d.members(),
            "capability_map": d.capability_map(),
            "subtask_similarity": np.round(d.similarity, 6).tolist(),
            "discovery": {"method": d.method, "n_capabilities": d.n_capabilities, "edges": d.n_edges},
            "capability_pool_sizes": dict(zip(d.names, pools)),
            "stages": self.stages,
            "self_influence_curves": dict(zip(d.names, self.curation.self_influence_curves)),
            "trajectory": self.trajectory,
            "checkpoints": self.checkpoints,
            "feature_skipped": {"count": len(self.skipped), "rows": self.skipped[:100]},
            "stage_order_rule": self.config.get("stage_order"),
        }
        if self.work_dir:
            info["work_dir"] = self.work_dir
        return info

    def save(self, out_dir: str, plots: bool = True) -> list[str]:
        """Write `cadc_scores.npz` — `influence` (N × K trajectory influence), `self_influence` (T × N, per
        checkpoint), `capability`, `stage`, `selected` (per pool row), `subtasks`, `subtask_capability`,
        `subtask_similarity`, `capabilities`, `checkpoint_weights` — and the plots ([`plot_result`]); returns
        the paths."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "cadc_scores.npz")
        cols = self.columns()
        d = self.discovery
        np.savez(
            path,
            influence=self.influence.astype(np.float32),
            self_influence=self.self_influence.astype(np.float32),
            capability=cols["cadc_capability"],
            stage=cols["cadc_stage"],
            selected=cols["cadc_selected"],
            subtasks=np.array(d.subtasks),
            subtask_capability=d.labels,
            subtask_similarity=d.similarity.astype(np.float32),
            capabilities=np.array(d.names),
            checkpoint_weights=np.asarray(self.weights, dtype=np.float64),
        )
        paths = [path]
        if plots and available("matplotlib", "the CADC plots"):
            paths += plot_result(self, out_dir)
        return paths


def plot_result(result: CADCResult, out_dir: str) -> list[str]:
    """`capability_map.png` (trajectory cosine similarity of the target subtasks, grouped by discovered capability)
    and `stages.png` (rows per curriculum stage, and each capability's self-influence across checkpoints)."""
    from ..plots import figure, heatmap, save_figure

    d = result.discovery
    order = np.argsort(d.labels, kind="stable")
    labels = [f"{d.subtasks[i]} ({d.names[d.labels[i]]})" for i in order]
    paths = [
        heatmap(
            d.similarity[np.ix_(order, order)],
            labels,
            labels,
            os.path.join(out_dir, "capability_map.png"),
            title=f"{d.n_capabilities} capabilities ({d.method})",
            annotate=len(order) <= 12,
            vmin=-1,
            vmax=1,
            cmap="coolwarm",
            colorbar_label="trajectory cosine similarity",
            separators=(np.flatnonzero(np.diff(d.labels[order])) + 0.5).tolist(),
        )
    ]
    fig = figure(10, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    stage_names = [f"{k}: {st['capability']}" for k, st in enumerate(result.stages)]
    ax1.bar(range(len(stage_names)), [st["rows"] for st in result.stages])
    ax1.set_xticks(range(len(stage_names)), stage_names)
    ax1.set_xlabel("stage (in training order): capability")
    ax1.set_ylabel("rows")
    ax1.set_title("curriculum stages")
    for name, curve in zip(d.names, result.curation.self_influence_curves):
        ax2.plot(range(len(curve)), curve, marker="o", label=name)
    ax2.set_xticks(range(len(result.curation.self_influence_curves[0])))
    ax2.set_xlabel("warm-up checkpoint")
    ax2.set_ylabel("mean self-influence of the selected rows")
    ax2.set_title("self-influence (fastest drop first)")
    ax2.legend()
    fig.tight_layout()
    paths.append(save_figure(fig, os.path.join(out_dir, "stages.png"), dpi=100))
    return paths
