"""DataProphet's result: every term of M for every source × target, and the allocation they imply."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..extras import available
from ..fingerprint import stable_seed
from ..plan import Plan
from ..signals.diversity import distinct_first_order
from .allocation import (
    capped_allocation,
    combine_targets,
    guard_ppl_ratio,
    per_target_weights,
    select_instances,
    sign_safe,
)
from .config import DataProphetConfig, Terms
from .tau import Matrix

__all__ = ["DataProphetResult", "InstanceScores"]


@dataclass
class DataProphetResult:
    """Signals and terms of M for every source × target, and the allocation they imply.

    `factors()` gives each factor as a sources × targets matrix (a switched-off factor is all ones) and
    `metric()` their product — **the paper's M**, whatever the configuration — so that a user can see why a source
    ranks where it does; `metric(terms=...)` gives any ablation without recomputing signals.

    The allocation uses [`allocation_metric`]: the product of `factors(fixed=True)`, i.e. M with the configured
    fixes (centred and sign-safe similarities, guarded perplexity ratio, duplicate-aware diversity; see
    [`mixwise.dataprophet.allocation`]). With `preset="paper"` it is exactly `metric()`.
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
    centred: dict[str, Matrix] = field(default_factory=dict)  # "qsim"/"asim"/"isim": cos of the centred means
    silhouette_distinct: dict[str, float] = field(default_factory=dict)  # the same on the distinct samples only
    entropy_distinct: dict[str, float] = field(default_factory=dict)
    distinct: dict[str, float] = field(default_factory=dict)  # share of distinct samples in each source's subsample
    n_rows: dict[str, dict[str, int]] = field(default_factory=dict)  # {"source"/"target": {name: rows used}}
    failures: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # "role:name" -> skipped rows
    computed: list[tuple[str, str, str]] = field(default_factory=list)  # (role, name, kind) computed this call
    cached: list[tuple[str, str, str]] = field(default_factory=list)  # (role, name, kind) read from the cache

    def for_targets(self, names: Sequence[str]) -> DataProphetResult:
        """The same result restricted to the targets `names` (no signal is recomputed: a target's column of every
        term depends only on that target, except the centre of the centred similarities, which stays the one
        computed over all the datasets scored)."""
        names = list(names)
        unknown = [t for t in names if t not in self.targets]
        if unknown:
            raise ValueError(f"unknown targets {unknown}; targets are {self.targets}")

        def cols(m: Matrix | None) -> Matrix | None:
            return None if m is None else Matrix(m.rows, names, np.stack([m.col(t) for t in names], axis=1))

        return replace(
            self,
            targets=names,
            qsim=cols(self.qsim),
            asim=cols(self.asim),
            isim=cols(self.isim),
            centred={k: cols(m) for k, m in self.centred.items()},
            ppl_target={t: self.ppl_target[t] for t in names if t in self.ppl_target},
        )

    def factors(self, terms: Terms | None = None, fixed: bool = False) -> dict[str, Matrix]:
        """The five factors as sources × targets matrices: `qsim`, `asim`, `isim`, `ppl_ratio` = PPL(s)/PPL(t),
        `diversity` = Sil(s)+H(s); all ones where the term is off.

        `fixed=False`: the paper's formulas. `fixed=True`: with the configured allocation options (similarities
        centred (`centre`) and made sign-safe (`similarity_sign`), the ratio guarded (`ppl_guard`), diversity on the
        distinct samples (`diversity_dedup`))."""
        terms = terms or self.terms
        cfg = self.config
        S, T = len(self.sources), len(self.targets)
        ones = np.ones((S, T))
        out = {}
        for name in ("qsim", "asim", "isim"):
            m = getattr(self, name)
            if getattr(terms, name):
                if m is None:
                    raise ValueError(f"term {name} is on but was not computed (score with it switched on)")
                if fixed:
                    if cfg.centre == "pooled":
                        if name not in self.centred:
                            raise ValueError(f"the centred {name} was not computed")
                        m = self.centred[name]
                    m = Matrix(m.rows, m.cols, sign_safe(m.values, cfg.similarity_sign))
                out[name] = m
            else:
                out[name] = Matrix(self.sources, self.targets, ones)
        if terms.ppl:
            if not self.ppl_source or not self.ppl_target:
                raise ValueError("term ppl is on but perplexities were not computed")
            ps = np.array([self.ppl_source[s] for s in self.sources])
            pt = np.array([self.ppl_target[t] for t in self.targets])
            ratio = ps[:, None] / pt[None, :]
            if fixed:
                ratio = guard_ppl_ratio(ratio, cfg.ppl_guard, cfg.ppl_cap)
            out["ppl_ratio"] = Matrix(self.sources, self.targets, ratio)
        else:
            out["ppl_ratio"] = Matrix(self.sources, self.targets, ones)
        if terms.diversity:
            if not self.silhouette:
                raise ValueError("term diversity is on but it was not computed")
            if fixed and cfg.diversity_dedup:
                d = np.array(
                    [(self.silhouette_distinct[s] + self.entropy_distinct[s]) * self.distinct[s] for s in self.sources]
                )
            else:
                d = np.array([self.silhouette[s] + self.entropy[s] for s in self.sources])
            out["diversity"] = Matrix(self.sources, self.targets, np.repeat(d[:, None], T, axis=1))
        else:
            out["diversity"] = Matrix(self.sources, self.targets, ones)
        return out

    def metric(self, terms: Terms | None = None) -> Matrix:
        """`M(s→t)`, the product of the enabled factors with the paper's formulas (rows sources, columns targets)."""
        return self._product(self.factors(terms))

    def allocation_metric(self, terms: Terms | None = None) -> Matrix:
        """The M the allocation uses: the product of `factors(terms, fixed=True)` (the paper's M under
        `preset="paper"`)."""
        return self._product(self.factors(terms, fixed=True))

    def _product(self, factors: dict[str, Matrix]) -> Matrix:
        values = np.ones((len(self.sources), len(self.targets)))
        for m in factors.values():
            values = values * m.values
        return Matrix(self.sources, self.targets, values)

    def target_weights(self, terms: Terms | None = None) -> Matrix:
        """Alg. 1 per-target weights (columns sum to 1) of [`allocation_metric`], with the configured sharpening.

        Under the fixes (not `preset="paper"`), a target for which no source scores above 0 (every source has a
        non-positive centred similarity in some field) gets uniform weights instead of an error; such targets are
        listed by [`uniform_targets`]."""
        c = self.config
        m = self.allocation_metric(terms)
        if not c.is_paper:
            values = m.values.copy()
            for k in range(values.shape[1]):
                if not np.any(values[:, k] > 0):
                    values[:, k] = 1.0
            m = Matrix(m.rows, m.cols, values)
        return per_target_weights(m, c.sharpen, c.power, c.temperature)

    def uniform_targets(self, terms: Terms | None = None) -> list[str]:
        """Targets whose allocation fell back to uniform weights (no source scored above 0; never under the paper
        preset, which raises instead)."""
        if self.config.is_paper:
            return []
        m = self.allocation_metric(terms)
        return [t for k, t in enumerate(m.cols) if not np.any(m.values[:, k] > 0)]

    def weights(self, terms: Terms | None = None) -> dict[str, float]:
        """Per-source weights after combining the targets (`combine`, `target_weights`)."""
        c = self.config
        return combine_targets(self.target_weights(terms), c.target_weights if c.combine == "weighted" else None)

    def target_plans(self, sizes: Mapping[str, int], budget: int, **kwargs: Any) -> dict[str, Plan]:
        """Alg. 1 for each target on its own: `{target: Plan}`."""
        tw = self.target_weights()
        return {t: Plan.from_weights(dict(zip(tw.rows, tw.col(t))), sizes, budget, **kwargs) for t in self.targets}

    def to_plan(
        self,
        sizes: Mapping[str, int],
        budget: int,
        row_groups: Mapping[str, np.ndarray] | None = None,
        **kwargs: Any,
    ) -> Plan:
        """The combined allocation as an exact plan under `budget`; the terms go to `plan.extra`.

        With `dedup_rows` and `row_groups` (`{source: duplicate-group id per row}`, e.g. from
        [`mixwise.signals.diversity.content_hashes`]), a per-sample plan: no source gets more rows than it has
        distinct rows ([`capped_allocation`]) and each source's rows are a seeded draw that takes one row of every
        duplicate group before any second copy ([`mixwise.signals.diversity.distinct_first_order`])."""
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update(self.to_extra())
        kwargs.setdefault("method", "dataprophet")
        weights = self.weights()
        if not (self.config.dedup_rows and row_groups):
            return Plan.from_weights(weights, sizes, budget, extra=extra, **kwargs)
        caps = {s: int(len(np.unique(row_groups[s]))) for s in weights}
        counts = capped_allocation(weights, caps, budget)
        rows = {}
        for s, n in counts.items():
            rng = np.random.default_rng(stable_seed(kwargs.get("seed", 0), "dataprophet-rows", s, sizes[s]))
            order = distinct_first_order(rng.permutation(sizes[s]), np.asarray(row_groups[s]))
            passes = -(-n // max(1, len(order)))
            rows[s] = sorted(int(i) for i in np.tile(order, passes)[:n]) if n else []
        extra["dedup_rows"] = {"distinct_rows": caps, "counts": counts}
        return Plan.from_rows(rows, sizes, extra=extra, **kwargs)

    def to_extra(self) -> dict[str, Any]:
        """JSON-friendly summary for the manifest: metric, factors, signals, per-target weights, skipped rows."""
        return {
            "metric": self.metric().to_dict(),
            "allocation_metric": self.allocation_metric().to_dict(),
            "allocation_options": self.config.allocation_options(),
            "uniform_targets": self.uniform_targets(),
            "terms": {k: m.to_dict() for k, m in self.factors().items()},
            "distinct": self.distinct,
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
    groups: np.ndarray | None = None  # duplicate-group id of each scored row (None: not computed)

    def select(
        self, top_k: int | None = None, threshold: float | None = None, distinct: bool = False
    ) -> dict[str, list[int]]:
        """`{source: sorted row ids}` of the selected samples (top-K or threshold on the combined score).

        `distinct`: one row of each duplicate group (`groups`) before any second copy, so the top K holds no
        duplicate unless K exceeds the number of distinct rows."""
        if distinct:
            if self.groups is None:
                raise ValueError("distinct selection needs the duplicate groups of the scored rows")
            order = select_instances(self.combined, threshold=threshold) if threshold is not None else None
            if order is None:
                order = select_instances(self.combined, top_k=len(self.combined))
            picked = distinct_first_order(order, self.groups)
            if top_k is not None:
                picked = picked[:top_k]
        else:
            picked = select_instances(self.combined, top_k=top_k, threshold=threshold)
        out: dict[str, list[int]] = {}
        for k in picked:
            out.setdefault(self.sources[k], []).append(self.rows[k])
        return {s: sorted(r) for s, r in out.items()}
