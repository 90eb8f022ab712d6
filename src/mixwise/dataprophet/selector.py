"""The DataProphet selectors: per-source weights (Alg. 1) and per-sample scores (Alg. 2) from the signals."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import datasets
import numpy as np

from ..plan import Plan
from ..selectors import SelectionContext, plan_kwargs
from ..signals.diversity import content_hashes, diversity
from ..sources import Source, named_datasets
from .allocation import centred_similarity, instance_scores
from .config import DataProphetConfig, config_from
from .result import DataProphetResult, InstanceScores
from .signals import DatasetSignals, SignalComputer
from .tau import Matrix

__all__ = ["DataProphet", "DataProphetInstances"]


class DataProphet:
    """Training-free per-source weights (DataProphet, Alg. 1). A selector: `select(context) -> Plan`.

    Usable as a `datasets` transform (`mixwise.select_mixture(pool, DataProphet(), budget, model=...,
    processing_class=..., targets=...)`), inside a trainer through `mixwise.attach(trainer, mixture,
    selector=DataProphet(), targets=...)` (the live model scores; the work is split across ranks), and from the
    CLI (`mixwise score`). [`DataProphet.score`] returns the full [`DataProphetResult`] (terms, signals).

    Args:
        settings: a [`DataProphetConfig`]; keyword arguments override its fields (e.g. `DataProphet(subsample=64)`).

    Attributes:
        settings: the configuration (`config()` returns it as a dict, as the selector protocol asks).
        last_result: the [`DataProphetResult`] of the last `score`/`select` call.
        computer: the [`~mixwise.dataprophet.signals.SignalComputer`] that computes and caches the signals.
        last_work: `{"items_total", "items_local"}` of the last computation: how many (dataset, signal, row) items
            were computed in all and by this process.
    """

    name = "dataprophet"

    def __init__(self, settings: DataProphetConfig | None = None, **overrides: Any):
        self.settings = config_from(settings, overrides)
        self.computer = SignalComputer(self.settings)
        self.last_result: DataProphetResult | None = None

    @property
    def last_work(self) -> dict[str, int]:
        return self.computer.last_work

    def config(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def select(self, context: SelectionContext) -> Plan:
        self._check_context(context)
        sources = {s.name: s.dataset for s in context.mixture.sources}
        result = self.score(
            sources, context.targets, context.model, context.processing_class, model_id=context.model_id
        )
        groups = self.row_groups(sources) if self.settings.dedup_rows else None
        return result.to_plan(context.sizes, context.budget, row_groups=groups, **plan_kwargs(self, context))

    @staticmethod
    def row_groups(sources: Mapping[str, datasets.Dataset]) -> dict[str, np.ndarray]:
        """`{source: duplicate-group id per row}`: rows with the same stored images and text (ids and the source
        column aside) share a group ([`mixwise.signals.diversity.content_hashes`]; no model needed)."""
        out = {}
        for name, ds in sources.items():
            ids: dict[str, int] = {}
            out[name] = np.array([ids.setdefault(h, len(ids)) for h in content_hashes(ds)], dtype=np.int64)
        return out

    @staticmethod
    def _check_context(context: SelectionContext) -> None:
        if not context.targets:
            raise ValueError(
                "DataProphet needs target datasets (validation sets to get better at): pass targets={name: Dataset}"
            )
        if context.model is None:
            raise ValueError("DataProphet scores with a model: pass model= and processing_class=")

    # -- scoring --------------------------------------------------------------------------------------------------

    def score(
        self,
        sources: Mapping[str, datasets.Dataset] | Sequence[Source],
        targets: Mapping[str, datasets.Dataset | Source] | Sequence[Source],
        model: Any,
        processing_class: Any,
        model_id: str | None = None,
    ) -> DataProphetResult:
        """Compute (or read from the cache) every signal and return the terms of M for all sources × targets."""
        src = named_datasets(sources, "source")
        tgt = named_datasets(targets, "target")
        if not src or not tgt:
            raise ValueError(f"DataProphet needs at least one source and one target, got {list(src)} and {list(tgt)}")
        specs = [("source", n, ds, self.settings.subsample) for n, ds in src.items()]
        specs += [("target", n, ds, self.settings.subsample) for n, ds in tgt.items()]
        signals, computed, cached = self.computer.signals(
            specs, self.settings.terms, model, processing_class, model_id
        )
        result = self._result(src, tgt, signals)
        result.computed, result.cached = computed, cached
        self.last_result = result
        return result

    # -- terms ------------------------------------------------------------------------------------------------------

    def _result(
        self, src: dict[str, Any], tgt: dict[str, Any], signals: dict[tuple[str, str], DatasetSignals]
    ) -> DataProphetResult:
        cfg = self.settings
        terms = cfg.terms
        S, T = list(src), list(tgt)

        centred: dict[str, Matrix] = {}

        def sim(key: str) -> Matrix | None:
            if not getattr(terms, f"{key}sim"):
                return None
            ms = {s: signals[("source", s)].mean(key) for s in S}
            mt = {t: signals[("target", t)].mean(key) for t in T}
            centred[f"{key}sim"] = centred_similarity(ms, mt)
            return Matrix(S, T, np.array([[float(ms[s] @ mt[t]) for t in T] for s in S]))

        ppl_s = {s: signals[("source", s)].ppl for s in S} if terms.ppl else {}
        ppl_t = {t: signals[("target", t)].ppl for t in T} if terms.ppl else {}
        sil, ent, sil_d, ent_d, distinct = {}, {}, {}, {}, {}
        if terms.diversity:
            for s in S:
                sig = signals[("source", s)]
                z = sig.z()
                d = diversity(z, cfg.n_clusters, seed=cfg.seed, n_init=cfg.kmeans_n_init, name=s)
                sil[s], ent[s] = d.silhouette, d.entropy
                rows = sig.rows["text"] if sig.i is None else np.intersect1d(sig.rows["text"], sig.rows["image"])
                hashes = content_hashes(src[s].select(rows))  # exact duplicates among the rows of z
                dd = diversity(
                    z,
                    cfg.n_clusters,
                    seed=cfg.seed,
                    n_init=cfg.kmeans_n_init,
                    name=s,
                    dedup=True,
                    groups=np.unique(hashes, return_inverse=True)[1],
                )
                sil_d[s], ent_d[s], distinct[s] = dd.silhouette, dd.entropy, dd.distinct
        n_rows: dict[str, dict[str, int]] = {"source": {}, "target": {}}
        for (role, name), sig in signals.items():
            n_rows[role][name] = int(max(len(r) for r in sig.rows.values()))
        failures = {f"{sig.role}:{sig.name}": sig.failures for sig in signals.values() if sig.failures}
        return DataProphetResult(
            sources=S,
            targets=T,
            qsim=sim("q"),
            asim=sim("a"),
            isim=sim("i"),
            ppl_source=ppl_s,
            ppl_target=ppl_t,
            silhouette=sil,
            entropy=ent,
            centred=centred,
            silhouette_distinct=sil_d,
            entropy_distinct=ent_d,
            distinct=distinct,
            terms=terms,
            config=cfg,
            n_rows=n_rows,
            failures=failures,
        )

    # -- instance level (Alg. 2) ------------------------------------------------------------------------------------

    def score_instances(
        self,
        pool: Mapping[str, datasets.Dataset] | Sequence[Source],
        targets: Mapping[str, datasets.Dataset | Source] | Sequence[Source],
        model: Any,
        processing_class: Any,
        model_id: str | None = None,
    ) -> InstanceScores:
        """Alg. 2 scores of **every** row of `pool` for each target (targets use the configured subsample).

        Rows that fail (with `on_error="skip"`) are left out of the scores.
        """
        cfg = self.settings
        terms = replace(cfg.terms, diversity=False)
        pool_named, tgt_named = named_datasets(pool, "source"), named_datasets(targets, "target")
        if not pool_named or not tgt_named:
            raise ValueError("instance scoring needs a pool and at least one target")
        specs = [("source", n, ds, None) for n, ds in pool_named.items()]
        specs += [("target", n, ds, cfg.subsample) for n, ds in tgt_named.items()]
        signals, _, _ = self.computer.signals(specs, terms, model, processing_class, model_id)
        stats = {}
        for t in tgt_named:
            sig = signals[("target", t)]
            stats[t] = {"q": sig.mean("q"), "a": sig.mean("a"), "i": sig.mean("i")}
            stats[t]["ppl"] = sig.ppl if terms.ppl else None
        centres = None
        if cfg.centre == "pooled":  # the mean of every dataset's mean unit vector, each dataset counted once
            centres = {}
            for key in ("q", "a", "i"):
                means = [signals[("source", s)].mean(key) for s in pool_named] + [stats[t][key] for t in stats]
                if all(m is not None for m in means):
                    centres[key] = np.mean(means, axis=0)
        names: list[str] = []
        rows: list[int] = []
        parts = []
        for s in pool_named:
            sig = signals[("source", s)]
            keep = _common_rows(sig)
            sub = {k: _take(sig, k, keep) for k in ("q", "a", "i", "nll")}
            scores_s = instance_scores(
                sub["q"],
                sub["a"],
                sub["i"],
                sub["nll"],
                stats,
                terms,
                centres=centres,
                similarity_sign=cfg.similarity_sign,
                ppl_guard=cfg.ppl_guard,
                ppl_cap=cfg.ppl_cap,
            )
            parts.append(scores_s.values)
            names += [s] * len(keep)
            rows += [int(r) for r in keep]
        values = np.concatenate(parts)
        scores = Matrix([f"{s}/{r}" for s, r in zip(names, rows)], list(stats), values)
        lam = np.ones(len(stats))
        if cfg.combine == "weighted":
            lam = np.array([float(cfg.target_weights.get(t, 0.0)) for t in stats])
        combined = values @ (lam / lam.sum())
        # exact duplicates across the whole pool (same images and text), by content hash
        hashes = {s: content_hashes(ds) for s, ds in pool_named.items()}
        groups = np.unique([hashes[s][r] for s, r in zip(names, rows)], return_inverse=True)[1]
        return InstanceScores(sources=names, rows=rows, scores=scores, combined=combined, groups=groups)


class DataProphetInstances(DataProphet):
    """Instance-level DataProphet (Alg. 2) as a selector: the `budget` highest-scoring rows of the whole pool.

    `m(u→t) = QSim(u,t)·ASim(u,t)·ISim(u,t)·PPL({u})/PPL(t)`, combined over targets as `Σ_t λ_t m(u→t)`; returns a
    per-sample plan ([`Plan.from_rows`]). Every row of the pool is scored (the subsample applies to targets).
    """

    name = "dataprophet_instances"

    def select(self, context: SelectionContext) -> Plan:
        self._check_context(context)
        pool = {s.name: s.dataset for s in context.mixture.sources}
        scores = self.score_instances(
            pool, context.targets, context.model, context.processing_class, model_id=context.model_id
        )
        if len(scores.combined) < context.budget:
            raise ValueError(
                f"only {len(scores.combined)} usable rows in the pool for a budget of {context.budget} rows"
            )
        rows = scores.select(top_k=context.budget, distinct=bool(self.settings.dedup_rows))
        kwargs = plan_kwargs(self, context)
        kwargs["extra"] = {
            "instance_scores": {
                "targets": scores.scores.cols,
                "selected_min_score": float(np.sort(scores.combined)[::-1][context.budget - 1]),
            }
        }
        return Plan.from_rows(rows, context.sizes, **kwargs)


def _common_rows(sig: DatasetSignals) -> np.ndarray:
    kinds = [k for k in sig.rows]
    rows = sig.rows[kinds[0]]
    for k in kinds[1:]:
        rows = np.intersect1d(rows, sig.rows[k])
    return rows


def _take(sig: DatasetSignals, key: str, rows: np.ndarray) -> np.ndarray | None:
    x = getattr(sig, key)
    if x is None:
        return None
    kind = {"q": "text", "a": "text", "i": "image", "nll": "nll"}[key]
    pos = np.searchsorted(sig.rows[kind], rows)
    return x[pos]
