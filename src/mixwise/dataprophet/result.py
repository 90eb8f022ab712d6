"""DataProphet's result: every term of M for every source × target, and the allocation they imply."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..extras import available
from ..plan import Plan
from .allocation import combine_targets, per_target_weights, select_instances
from .config import DataProphetConfig, Terms
from .tau import Matrix

__all__ = ["DataProphetResult", "InstanceScores"]


@dataclass
class DataProphetResult:
    """Signals and terms of M for every source × target, and the allocation they imply.

    `factors()` gives each factor as a sources × targets matrix (a switched-off factor is all ones) and
    `metric()` their product, so that a user can see why a source ranks where it does; `metric(terms=...)` gives
    any ablation without recomputing signals.
    """

    sources: list[str]
    targets: list[str]
    qsim: Matrix | None
    asim: Matrix | None
    isim: Matrix | None
    ppl_source: dict[str, float]
    ppl_target: dict[str, float]
    silhouette: dict[str, float]
    entropy: dict[str, float]
    terms: Terms
    config: DataProphetConfig
    n_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # {"source"/"target": {name: rows used}}
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "role:name" -> skipped rows
    computed: list[tuple[str, str, str]] = field(default_factory=list)  # (role, name, kind) computed this call
    cached: list[tuple[str, str, str]] = field(default_factory=list)  # (role, name, kind) read from the cache

    def factors(self, terms: Terms | None = None) -> dict[str, Matrix]:
        """The five factors as sources × targets matrices: `qsim`, `asim`, `isim`, `ppl_ratio` = PPL(s)/PPL(t),
        `diversity` = Sil(s)+H(s); all ones where the term is off."""
        terms = terms or self.terms
        S, T = len(self.sources), len(self.targets)
        ones = np.ones((S, T))
        out = {}
        for name in ("qsim", "asim", "isim"):
            m = getattr(self, name)
            if getattr(terms, name):
                if m is None:
                    raise ValueError(f"term {name} is on but was not computed (score with it switched on)")
                out[name] = m
            else:
                out[name] = Matrix(self.sources, self.targets, ones)
        if terms.ppl:
            if not self.ppl_source or not self.ppl_target:
                raise ValueError("term ppl is on but perplexities were not computed")
            ps = np.array([self.ppl_source[s] for s in self.sources])
            pt = np.array([self.ppl_target[t] for t in self.targets])
            out["ppl_ratio"] = Matrix(self.sources, self.targets, ps[:, None] / pt[None, :])
        else:
            out["ppl_ratio"] = Matrix(self.sources, self.targets, ones)
        if terms.diversity:
            if not self.silhouette:
                raise ValueError("term diversity is on but it was not computed")
            d = np.array([self.silhouette[s] + self.entropy[s] for s in self.sources])
            out["diversity"] = Matrix(self.sources, self.targets, np.repeat(d[:, None], T, axis=1))
        else:
            out["diversity"] = Matrix(self.sources, self.targets, ones)
        return out

    def metric(self, terms: Terms | None = None) -> Matrix:
        """`M(s→t)`, the product of the enabled factors (rows sources, columns targets)."""
        values = np.ones((len(self.sources), len(self.targets)))
        for m in self.factors(terms).values():
            values = values * m.values
        return Matrix(self.sources, self.targets, values)

    def target_weights(self, terms: Terms | None = None) -> Matrix:
        """Alg. 1 per-target weights (columns sum to 1), with the configured sharpening."""
        c = self.config
        return per_target_weights(self.metric(terms), c.sharpen, c.power, c.temperature)

    def weights(self, terms: Terms | None = None) -> dict[str, float]:
        """Per-source weights after combining the targets (`combine`, `target_weights`)."""
        c = self.config
        return combine_targets(self.target_weights(terms), c.target_weights if c.combine == "weighted" else None)

    def target_plans(self, sizes: Mapping[str, int], budget: int, **kwargs: Any) -> dict[str, Plan]:
        """Alg. 1 for each target on its own: `{target: Plan}`."""
        tw = self.target_weights()
        return {t: Plan.from_weights(dict(zip(tw.rows, tw.col(t))), sizes, budget, **kwargs) for t in self.targets}

    def to_plan(self, sizes: Mapping[str, int], budget: int, **kwargs: Any) -> Plan:
        """The combined allocation as an exact plan under `budget`; the terms go to `plan.extra`."""
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update(self.to_extra())
        kwargs.setdefault("method", "dataprophet")
        return Plan.from_weights(self.weights(), sizes, budget, extra=extra, **kwargs)

    def to_extra(self) -> dict[str, Any]:
        """JSON-friendly summary for the manifest: metric, factors, signals, per-target weights, skipped rows."""
        return {
            "metric": self.metric().to_dict(),
            "terms": {k: m.to_dict() for k, m in self.factors().items()},
            "enabled_terms": self.terms.enabled(),
            "ppl_source": self.ppl_source,
            "ppl_target": self.ppl_target,
            "silhouette": self.silhouette,
            "entropy": self.entropy,
            "target_weights": self.target_weights().to_dict(),
            "combine": {"rule": self.config.combine, "target_weights": self.config.target_weights},
            "sharpen": {
                "rule": self.config.sharpen,
                "power": self.config.power,
                "temperature": self.config.temperature,
            },
            "n_rows": self.n_rows,
            "skipped_rows": self.failures,
        }

    def save(self, out_dir: str | os.PathLike, heatmap: bool = True) -> dict[str, str]:
        """Write `metric.csv`, `term_<factor>.csv`, `signals.csv`, `weights.csv` (and `heatmap.png`) into `out_dir`."""
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        paths = {"metric": self.metric().to_csv(os.path.join(out_dir, "metric.csv"))}
        for name, m in self.factors().items():
            paths[f"term_{name}"] = m.to_csv(os.path.join(out_dir, f"term_{name}.csv"))
        tw = self.target_weights()
        combined = self.weights()
        w = Matrix(tw.rows, [*tw.cols, "combined"], np.column_stack([tw.values, [combined[s] for s in tw.rows]]))
        paths["weights"] = w.to_csv(os.path.join(out_dir, "weights.csv"))
        sig = os.path.join(out_dir, "signals.csv")
        with open(sig, "w") as f:
            f.write("role,dataset,rows,ppl,silhouette,entropy,diversity\n")
            for s in self.sources:
                sil, h = self.silhouette.get(s), self.entropy.get(s)
                div = "" if sil is None else repr(sil + h)
                f.write(
                    f"source,{s},{self.n_rows.get('source', {}).get(s, '')},{self.ppl_source.get(s, '')},"
                    f"{'' if sil is None else sil},{'' if h is None else h},{div}\n"
                )
            for t in self.targets:
                f.write(f"target,{t},{self.n_rows.get('target', {}).get(t, '')},{self.ppl_target.get(t, '')},,,\n")
        paths["signals"] = sig
        if heatmap and available("matplotlib", "the DataProphet heatmap"):
            from ..plots import heatmap as draw

            m = self.metric()
            paths["heatmap"] = draw(
                m.values,
                m.rows,
                m.cols,
                os.path.join(out_dir, "heatmap.png"),
                title="DataProphet M(source → target)",
                xlabel="target",
                ylabel="source (training data)",
            )
        return paths


@dataclass
class InstanceScores:
    """Alg. 2 scores of every row of a pool: `scores` has one row per (source, row) and one column per target."""

    sources: list[str]  # source name of each scored row
    rows: list[int]  # row id (in its source) of each scored row
    scores: Matrix
    combined: np.ndarray

    def select(self, top_k: int | None = None, threshold: float | None = None) -> dict[str, list[int]]:
        """`{source: sorted row ids}` of the selected samples (top-K or threshold on the combined score)."""
        picked = select_instances(self.combined, top_k=top_k, threshold=threshold)
        out: dict[str, list[int]] = {}
        for k in picked:
            out.setdefault(self.sources[k], []).append(self.rows[k])
        return {s: sorted(r) for s, r in out.items()}
