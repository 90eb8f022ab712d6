"""DataProphet: training-free per-source weights from perplexity, field similarity and diversity.

Method of *DataProphet: Demystifying Supervision Data Generalization in Multimodal LLMs* (Qi, He, Roth, Fu; seeds
`000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`), as stated in SPEC section 1. The directional score of a
training source s for a target t is::

    M(s→t) = QSim(s,t) · ASim(s,t) · ISim(s,t) · PPL(s) · (Sil(s) + H(s)) / PPL(t)

* `QSim`, `ASim`, `ISim` — field similarity of questions, answers and images: the dot product of the two datasets'
  **mean unit vectors** (= expected cosine over independent draws), embeddings from the base model's own frozen
  encoders ([`mixwise.embeddings`]: by default the language model's last-layer hidden states mean-pooled over the
  field's tokens, and the vision tower + projector mean-pooled over the image's tokens; an external
  sentence-transformers text encoder can be given by local path);
* `PPL(D) = exp(mean over samples of the per-sample mean answer-token NLL)` under the base model
  ([`mixwise.perplexity`]); `PPL(s)` on the source's training rows, `PPL(t)` on the target's validation rows;
* `Sil(s) + H(s)` — diversity of the source: mean Euclidean silhouette plus normalized entropy of a K=10 k-means on
  per-sample vectors z = normalize(mean of the sample's field unit vectors) ([`mixwise.diversity`]).

Every factor can be switched off ([`Terms`]; the paper's ablations are [`ABLATIONS`]): a switched-off factor is
replaced by 1, removing exactly that factor. Signals are computed on a **seeded subsample** of each dataset
(`DataProphetConfig.subsample`, default 512 rows; the paper does not say), **cached per dataset** under a
deterministic fingerprint (dataset fingerprint + signal configuration + subsample rows + model id + library
version), so adding a target computes only that target's signals. Scoring work is split across processes with
[`mixwise.distributed.map_across_ranks`]; every rank ends with the same signals (padded batches give the same
values as batch size 1), so one and several processes give the same metric.

**Allocation (Alg. 1).** Per target t: `w_i(t) = f(M(s_i→t)) / Σ_j f(M(s_j→t))`, with `f` the identity (the paper:
proportional) or a **sharpening**: `f(m) = m^p` (`sharpen="power"`) or `f(m) = exp(m / T)` (`sharpen="temperature"`,
a softmax over sources). The paper's M spans only about 0.39–0.72, so proportional allocation is close to uniform;
sharpening concentrates the budget on the best sources. Negative scores (possible when a similarity or the
silhouette is negative) are clipped to 0 for the identity and power rules. **Several targets** are combined
explicitly: `w_i = Σ_t λ_t w_i(t)` with `λ` uniform (`combine="mean"`, the default: every target counts the same
whatever its scale) or the user's per-target weights (`combine="weighted"`, `target_weights`, normalized to sum 1).
The budget N is then split exactly with the spine's largest-remainder planner ([`mixwise.plan.Plan.from_weights`]:
`N_i = round(N·w_i)` repaired so that Σ N_i = N); a source asked for more rows than it has repeats rows (full passes,
then a random remainder), flagged `repeated` in the manifest (the paper draws extra rows from a larger original
dataset instead).

**Instance-level score (Alg. 2)**, for a pool of single samples u (e.g. generated data)::

    m(u→t) = QSim(u,t) · ASim(u,t) · ISim(u,t) · PPL({u}) / PPL(t)

with `Sim_X(u,t) = unit(x_u) · mean_unit_X(t)` and `PPL({u}) = exp(nll(u))`, no diversity term; several targets
are combined as `Σ_t λ_t m(u→t)`; select the top K ([`DataProphetInstances`], K = the budget) or every sample above
a threshold ([`select_instances`]).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

import datasets
import numpy as np

from . import distributed
from .diversity import diversity, sample_vectors
from .embeddings import EmbeddingConfig, FieldEmbedder, l2_normalize, mean_unit_vector
from .encoding import encode_rows
from .perplexity import PerplexityConfig, dataset_perplexity, forward_nll
from .plan import Plan, stable_seed
from .selectors import SelectionContext, _base_kwargs
from .sources import DataError, Source, as_pil, extract_fields, row_images
from .tau import Matrix
from .transforms import transform_fingerprint

logger = logging.getLogger(__name__)

__all__ = [
    "ABLATIONS",
    "PAPER_ABLATION_TAU",
    "DataProphet",
    "DataProphetConfig",
    "DataProphetInstances",
    "DataProphetResult",
    "DatasetSignals",
    "InstanceScores",
    "Terms",
    "combine_targets",
    "instance_scores",
    "per_target_weights",
    "select_instances",
    "sharpen_scores",
]

TERM_NAMES = ("qsim", "asim", "isim", "ppl", "diversity")


@dataclass
class Terms:
    """Which factors of M are used; a switched-off factor is replaced by 1."""

    qsim: bool = True
    asim: bool = True
    isim: bool = True
    ppl: bool = True
    diversity: bool = True

    @classmethod
    def without(cls, *names: str) -> Terms:
        unknown = [n for n in names if n not in TERM_NAMES]
        if unknown:
            raise ValueError(f"unknown DataProphet terms {unknown}; terms are {list(TERM_NAMES)}")
        return cls(**{n: n not in names for n in TERM_NAMES})

    def enabled(self) -> list[str]:
        return [n for n in TERM_NAMES if getattr(self, n)]


ABLATIONS: dict[str, Terms] = {
    "full": Terms(),
    "no_ppl": Terms.without("ppl"),
    "no_isim": Terms.without("isim"),
    "no_diversity": Terms.without("diversity"),
    "no_qsim": Terms.without("qsim"),
    "no_asim": Terms.without("asim"),
}
"""The paper's ablations (Table 2), by name."""

PAPER_ABLATION_TAU: dict[str, float] = {
    "full": 0.860,
    "no_ppl": 0.487,
    "no_isim": 0.625,
    "no_diversity": 0.659,
    "no_qsim": 0.778,
    "no_asim": 0.810,
}
"""Mean Kendall tau of each ablation reported by the paper (14 datasets, InternVL3-2B)."""


@dataclass
class DataProphetConfig:
    """Configuration of [`DataProphet`] (see the module docstring for the formulas).

    Attributes:
        subsample: rows per dataset the signals are computed on (seeded, without replacement; `None` = all rows).
        seed: seed of the subsamples and of k-means (independent of the training seed, so that the selection does
            not change with it).
        terms: which factors of M are used.
        n_clusters: K of the diversity k-means (paper: 10).
        kmeans_n_init: k-means restarts.
        sharpen: `"none"` (proportional, the paper), `"power"` (`M^power`) or `"temperature"` (`softmax(M/T)`).
        power: exponent of `sharpen="power"`.
        temperature: T of `sharpen="temperature"`.
        combine: `"mean"` (every target's normalized weights count the same) or `"weighted"` (`target_weights`).
        target_weights: `{target: λ}` for `combine="weighted"` (normalized; a target left out gets 0).
        embedding: field embedding configuration.
        perplexity: perplexity configuration.
        on_error: `"raise"` (default) on a bad row, naming dataset, row and field; `"skip"`: leave it out and count
            it (reported in the result and the manifest).
        cache_dir: directory of the per-dataset signal cache (one `.npz` + `.json` per dataset and signal);
            `None` = cache in memory only (per `DataProphet` object).
        progress: show tqdm progress bars.
    """

    subsample: int | None = 512
    seed: int = 0
    terms: Terms = field(default_factory=Terms)
    n_clusters: int = 10
    kmeans_n_init: int = 10
    sharpen: Literal["none", "power", "temperature"] = "none"
    power: float = 1.0
    temperature: float = 0.05
    combine: Literal["mean", "weighted"] = "mean"
    target_weights: dict[str, float] | None = None
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    perplexity: PerplexityConfig = field(default_factory=PerplexityConfig)
    on_error: Literal["raise", "skip"] = "raise"
    cache_dir: str | None = None
    progress: bool = True

    def __post_init__(self):
        if isinstance(self.terms, Mapping):
            self.terms = Terms(**self.terms)
        if isinstance(self.embedding, Mapping):
            self.embedding = EmbeddingConfig(**self.embedding)
        if isinstance(self.perplexity, Mapping):
            self.perplexity = PerplexityConfig(**self.perplexity)
        if self.subsample is not None and self.subsample < 1:
            raise ValueError(f"subsample must be >= 1 or None, got {self.subsample}")
        if self.sharpen not in ("none", "power", "temperature"):
            raise ValueError(f"sharpen must be 'none', 'power' or 'temperature', got {self.sharpen!r}")
        if self.sharpen == "power" and self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")
        if self.sharpen == "temperature" and self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.combine not in ("mean", "weighted"):
            raise ValueError(f"combine must be 'mean' or 'weighted', got {self.combine!r}")
        if self.combine == "weighted" and not self.target_weights:
            raise ValueError("combine='weighted' needs target_weights ({target: weight})")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        if self.n_clusters < 2:
            raise ValueError(f"n_clusters must be >= 2, got {self.n_clusters}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------------------------------------
# Allocation (Alg. 1) and instance selection (Alg. 2): pure functions
# ------------------------------------------------------------------------------------------------------------------


def sharpen_scores(
    m: np.ndarray, method: str = "none", power: float = 1.0, temperature: float = 0.05, name: str = "?"
) -> np.ndarray:
    """Per-source allocation weights for one target, normalized to sum 1.

    `"none"`: `max(m, 0) / Σ`; `"power"`: `max(m, 0)^p / Σ`; `"temperature"`: `exp(m/T) / Σ` (a softmax, computed
    stably). Raises naming the target when no source has a positive score.
    """
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise ValueError(f"target '{name}': the metric has non-finite values {m.tolist()}")
    if method == "temperature":
        e = np.exp((m - m.max()) / temperature)
        return e / e.sum()
    clipped = np.clip(m, 0.0, None)
    if method == "power":
        clipped = clipped**power
    elif method != "none":
        raise ValueError(f"unknown sharpening {method!r}")
    total = clipped.sum()
    if total <= 0:
        raise ValueError(f"target '{name}': no source has a positive score ({m.tolist()}); cannot allocate")
    return clipped / total


def per_target_weights(metric: Matrix, sharpen: str = "none", power: float = 1.0, temperature: float = 0.05) -> Matrix:
    """Alg. 1 weights for every target: column t is `f(M(·→t))` normalized to sum 1 (rows sources)."""
    cols = [sharpen_scores(metric.col(t), sharpen, power, temperature, name=t) for t in metric.cols]
    return Matrix(metric.rows, metric.cols, np.stack(cols, axis=1))


def combine_targets(weights: Matrix, target_weights: Mapping[str, float] | None = None) -> dict[str, float]:
    """`w_i = Σ_t λ_t w_i(t)`: uniform λ by default, else the given `{target: λ}` normalized (missing = 0)."""
    if target_weights:
        unknown = [t for t in target_weights if t not in weights.cols]
        if unknown:
            raise ValueError(f"target_weights name unknown targets {unknown}; targets are {weights.cols}")
        lam = np.array([float(target_weights.get(t, 0.0)) for t in weights.cols])
        if np.any(lam < 0) or lam.sum() <= 0:
            raise ValueError(f"target_weights must be >= 0 and not all 0, got {dict(target_weights)}")
    else:
        lam = np.ones(len(weights.cols))
    lam = lam / lam.sum()
    combined = weights.values @ lam
    return {s: float(w) for s, w in zip(weights.rows, combined)}


def instance_scores(
    q: np.ndarray | None,
    a: np.ndarray | None,
    i: np.ndarray | None,
    nll: np.ndarray | None,
    targets: Mapping[str, Mapping[str, Any]],
    terms: Terms | None = None,
) -> Matrix:
    """Alg. 2: `m(u→t) = QSim(u,t)·ASim(u,t)·ISim(u,t)·PPL({u})/PPL(t)` for every sample u and target t.

    Args:
        q, a, i: per-sample field embeddings of the pool, `(n, d)` (normalized here); `None` when the term is off.
        nll: per-sample mean answer-token NLL of the pool (`PPL({u}) = exp(nll_u)`); `None` when PPL is off.
        targets: `{name: {"q": mean unit vector, "a": ..., "i": ..., "ppl": PPL(t)}}`.
        terms: switches (diversity is never part of the instance score).

    Returns:
        a Matrix with one row per sample (`"0"`, `"1"`, ...) and one column per target.
    """
    terms = terms or Terms()
    n = next(len(x) for x in (q, a, i, nll) if x is not None)
    cols = []
    for t, stats in targets.items():
        score = np.ones(n)
        for key, x, on in (("q", q, terms.qsim), ("a", a, terms.asim), ("i", i, terms.isim)):
            if on:
                if x is None or stats.get(key) is None:
                    raise ValueError(f"target '{t}': term {key}sim is on but its embeddings are missing")
                score = score * (l2_normalize(x) @ np.asarray(stats[key], dtype=np.float64))
        if terms.ppl:
            if nll is None:
                raise ValueError("the ppl term is on but per-sample NLLs are missing")
            score = score * np.exp(np.asarray(nll, dtype=np.float64)) / float(stats["ppl"])
        cols.append(score)
    return Matrix([str(k) for k in range(n)], list(targets), np.stack(cols, axis=1))


def select_instances(
    scores: Sequence[float] | np.ndarray, top_k: int | None = None, threshold: float | None = None
) -> np.ndarray:
    """Indices of the selected samples, best first: the `top_k` highest scores, or every score `>= threshold`
    (both given: the top K among those above the threshold). Ties are broken by the lower index."""
    s = np.asarray(scores, dtype=np.float64)
    if top_k is None and threshold is None:
        raise ValueError("give top_k, threshold, or both")
    order = np.lexsort((np.arange(len(s)), -s))  # score descending, then index ascending
    if threshold is not None:
        order = order[s[order] >= threshold]
    if top_k is not None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        order = order[:top_k]
    return order


# ------------------------------------------------------------------------------------------------------------------
# Signals
# ------------------------------------------------------------------------------------------------------------------

KINDS = ("nll", "text", "image")


@dataclass
class DatasetSignals:
    """Per-sample signals of one dataset (its subsample): NLL, Q/A/I embeddings, and the rows that failed.

    `rows[kind]` holds the dataset row ids each array's rows belong to. A row that fails for one signal (e.g. a
    row over `max_length` has embeddings but no NLL) is left out of all of them ([`drop_failed`]).
    """

    name: str
    role: str
    fingerprint: str
    size: int
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    nll: np.ndarray | None = None
    q: np.ndarray | None = None
    a: np.ndarray | None = None
    i: np.ndarray | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"row", "field", "problem", "kind"}

    def drop_failed(self) -> None:
        """Leave rows that failed for any signal out of every signal, so that all terms use the same rows."""
        bad = np.array(sorted({int(f["row"]) for f in self.failures if f["row"] is not None}), dtype=np.int64)
        if bad.size == 0:
            return
        for kind, keys in (("nll", ("nll",)), ("text", ("q", "a")), ("image", ("i",))):
            if kind in self.rows:
                keep = ~np.isin(self.rows[kind], bad)
                self.rows[kind] = self.rows[kind][keep]
                for key in keys:
                    setattr(self, key, getattr(self, key)[keep])

    @property
    def ppl(self) -> float:
        if self.nll is None:
            raise ValueError(f"{self.role} '{self.name}': perplexity was not computed")
        return dataset_perplexity(self.nll)

    def mean(self, key: str) -> np.ndarray | None:
        x = getattr(self, key)
        return None if x is None else mean_unit_vector(x)

    def z(self) -> np.ndarray:
        """Per-sample vectors for diversity: normalized mean of the sample's Q, A (and I) unit vectors."""
        if self.q is None or self.a is None:
            raise ValueError(f"{self.role} '{self.name}': diversity needs the text embeddings")
        if self.i is None:
            return sample_vectors([self.q, self.a])
        common, qi, ii = np.intersect1d(self.rows["text"], self.rows["image"], return_indices=True)
        return sample_vectors([self.q[qi], self.a[qi], self.i[ii]])


def _failure(err: DataError, kind: str) -> dict[str, Any]:
    return {"row": err.row, "field": err.field, "problem": err.problem, "kind": kind}


def _rows_hash(rows: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()[:16]


def _dataset_has_images(ds: datasets.Dataset) -> bool:
    cols = [c for c in ("images", "image") if c in ds.column_names]
    if not cols or len(ds) == 0:
        return False
    first = ds.select_columns(cols).with_format("arrow")[0:1].to_pylist()[0]
    return bool(row_images(first))


class _Job:
    """One (dataset, kind) signal to compute: what the workers need (picklable-free: stays in each process)."""

    def __init__(self, role: str, name: str, dataset: datasets.Dataset, kind: str, rows: np.ndarray):
        self.role, self.name, self.dataset, self.kind, self.rows = role, name, dataset, kind, rows


# ------------------------------------------------------------------------------------------------------------------
# Result
# ------------------------------------------------------------------------------------------------------------------


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
        if heatmap:
            from .plots import heatmap as draw

            paths["heatmap"] = draw(self.metric(), os.path.join(out_dir, "heatmap.png"))
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


# ------------------------------------------------------------------------------------------------------------------
# The selector
# ------------------------------------------------------------------------------------------------------------------


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
        last_work: `{"items_total", "items_local"}` of the last computation: how many (dataset, signal, row) items
            were computed in all and by this process.
    """

    name = "dataprophet"

    def __init__(self, settings: DataProphetConfig | None = None, **overrides: Any):
        settings = settings or DataProphetConfig()
        if overrides:
            known = {f.name for f in fields(DataProphetConfig)}
            unknown = sorted(set(overrides) - known)
            if unknown:
                raise TypeError(f"unknown DataProphet options {unknown}; options are {sorted(known)}")
            settings = replace(settings, **overrides)
        self.settings = settings
        self._memory: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
        self.last_result: DataProphetResult | None = None
        self.last_work: dict[str, int] = {}

    def config(self) -> dict[str, Any]:
        return self.settings.to_dict()

    def select(self, context: SelectionContext) -> Plan:
        self._check_context(context)
        sources = {s.name: s.dataset for s in context.mixture.sources}
        result = self.score(
            sources, context.targets, context.model, context.processing_class, model_id=context.model_id
        )
        return result.to_plan(context.sizes, context.budget, **_base_kwargs(self, context))

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
        src = _named(sources, "source")
        tgt = _named(targets, "target")
        if not src or not tgt:
            raise ValueError(f"DataProphet needs at least one source and one target, got {list(src)} and {list(tgt)}")
        specs = [("source", n, ds, self.settings.subsample) for n, ds in src.items()]
        specs += [("target", n, ds, self.settings.subsample) for n, ds in tgt.items()]
        signals, computed, cached = self._signals(specs, self.settings.terms, model, processing_class, model_id)
        result = self._result(src, tgt, signals)
        result.computed, result.cached = computed, cached
        self.last_result = result
        return result

    def _signals(
        self,
        specs: list[tuple[str, str, datasets.Dataset, int | None]],
        terms: Terms,
        model: Any,
        processing_class: Any,
        model_id: str | None,
    ) -> tuple[dict[tuple[str, str], DatasetSignals], list, list]:
        """Signals of `(role, name, dataset, subsample)` datasets: from the cache, or computed across ranks."""
        need_text = terms.qsim or terms.asim
        jobs: list[_Job] = []
        for role, name, ds, subsample in specs:
            rows = self._subsample(name, ds, role, subsample)
            images = _dataset_has_images(ds)
            if terms.isim and not images:
                raise DataError(name, None, "images", f"{role} has no images; switch the image term off (isim)")
            diverse = role == "source" and terms.diversity
            if terms.ppl:
                jobs.append(_Job(role, name, ds, "nll", rows))
            if need_text or diverse:
                jobs.append(_Job(role, name, ds, "text", rows))
            if images and (terms.isim or diverse):
                jobs.append(_Job(role, name, ds, "image", rows))
        model_key = model_id or f"unidentified-model-{id(model)}"
        keys = [self._key(job, model_key) for job in jobs]
        # The main process decides what is missing, so that every rank runs the same work list.
        missing = distributed.broadcast([k for k, key in enumerate(keys) if self._load(key, model_id) is None])
        for k, entry in zip(missing, self._compute([jobs[k] for k in missing], model, processing_class)):
            self._store(keys[k], entry, jobs[k], model_id)
        signals: dict[tuple[str, str], DatasetSignals] = {}
        for job, key in zip(jobs, keys):
            meta, arrays = self._load(key, model_id)
            sig = signals.setdefault(
                (job.role, job.name), DatasetSignals(job.name, job.role, job.dataset._fingerprint, len(job.dataset))
            )
            sig.rows[job.kind] = arrays["rows"]
            sig.failures += meta["failures"]
            if job.kind == "nll":
                sig.nll = arrays["nll"]
            elif job.kind == "text":
                sig.q, sig.a = arrays["q"], arrays["a"]
            else:
                sig.i = arrays["i"]
        for sig in signals.values():
            self._check_failures(sig)
            sig.drop_failed()
        computed = [(jobs[k].role, jobs[k].name, jobs[k].kind) for k in missing]
        cached = [(job.role, job.name, job.kind) for k, job in enumerate(jobs) if k not in set(missing)]
        return signals, computed, cached

    def _check_failures(self, sig: DatasetSignals) -> None:
        if sig.failures and self.settings.on_error == "raise":
            f = sig.failures[0]
            raise DataError(sig.name, f["row"], f["field"], f["problem"])
        for kind, rows in sig.rows.items():
            if len(rows) == 0:
                raise DataError(sig.name, None, "rows", f"no usable rows left for the {kind} signal ({sig.role})")

    def _subsample(self, name: str, ds: datasets.Dataset, role: str, subsample: int | None) -> np.ndarray:
        n = len(ds)
        if n == 0:
            raise DataError(name, None, "rows", f"the {role} dataset is empty")
        k = n if subsample is None else min(subsample, n)
        if k == n:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng(stable_seed(self.settings.seed, "dataprophet-subsample", name, n))
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)

    def _signal_config(self, kind: str) -> dict[str, Any]:
        cfg = self.settings
        if kind == "nll":
            return cfg.perplexity.key()
        emb = cfg.embedding.key()
        if kind == "text":
            return {k: emb[k] for k in ("text_encoder", "text_layer", "text_pooling", "max_text_tokens")}
        return {k: emb[k] for k in ("image_feature", "image_layer", "image_pooling")}

    def _key(self, job: _Job, model_key: str) -> str:
        return transform_fingerprint(
            f"dataprophet/{job.kind}",
            {"signal": self._signal_config(job.kind), "rows": _rows_hash(job.rows), "n": len(job.rows)},
            model_key,
            job.dataset._fingerprint,
        )

    # -- cache ------------------------------------------------------------------------------------------------------

    def _paths(self, key: str) -> tuple[str, str]:
        base = os.path.join(self.settings.cache_dir, key)
        return base + ".npz", base + ".json"

    def _load(self, key: str, model_id: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        if key in self._memory:
            return self._memory[key]
        if self.settings.cache_dir is None or model_id is None:
            return None
        npz, meta_path = self._paths(key)
        if not (os.path.exists(meta_path) and os.path.exists(npz)):
            return None
        with open(meta_path) as f:
            meta = json.load(f)
        with np.load(npz) as data:
            arrays = {k: data[k] for k in data.files}
        self._memory[key] = (meta, arrays)
        return meta, arrays

    def _store(self, key: str, entry: tuple[dict[str, Any], dict[str, np.ndarray]], job: _Job, model_id) -> None:
        meta = {**entry[0], "dataset": job.name, "role": job.role, "fingerprint": job.dataset._fingerprint}
        meta.update({"kind": job.kind, "model_id": model_id, "config": self._signal_config(job.kind)})
        self._memory[key] = (meta, entry[1])
        if self.settings.cache_dir is None or not distributed.is_main_process():
            return
        if model_id is None:
            logger.warning("DataProphet: no model id given, so signals are cached in memory only, not on disk")
            return
        os.makedirs(self.settings.cache_dir, exist_ok=True)
        npz, meta_path = self._paths(key)
        tmp = npz + ".tmp.npz"
        np.savez(tmp, **entry[1])
        os.replace(tmp, npz)
        with open(meta_path + ".tmp", "w") as f:
            json.dump(meta, f, indent=1)
        os.replace(meta_path + ".tmp", meta_path)  # the .json appears last: its presence marks a complete entry

    # -- computation ------------------------------------------------------------------------------------------------

    def _compute(
        self, jobs: list[_Job], model: Any, processing_class: Any
    ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """Compute the jobs' signals, split across ranks by row; every rank gets all results.

        The jobs of one dataset are computed together (they share its subsample rows): each row is read and decoded
        once, one forward pass gives its answer NLL and, from the same image pathway, its image vector, and one
        text pass embeds its question and answer.
        """
        if not jobs:
            self.last_work = {"items_total": 0, "items_local": 0}
            return []
        if model is None:
            raise ValueError("DataProphet needs a model to compute signals")
        units: dict[tuple[str, str], list[int]] = {}
        for j, job in enumerate(jobs):
            units.setdefault((job.role, job.name), []).append(j)
        members = list(units.values())
        for group in members:
            if any(not np.array_equal(jobs[j].rows, jobs[group[0]].rows) for j in group):
                raise RuntimeError("signals of one dataset were asked for on different rows")
        items = [(u, int(r)) for u, group in enumerate(members) for r in jobs[group[0]].rows]
        was_training = bool(getattr(model, "training", False))
        model.eval()
        local: dict[str, int] = {}

        def work(chunk):
            local["items_local"] = len(chunk)
            return self._work(jobs, members, chunk, model, processing_class)

        try:
            results = distributed.map_across_ranks(work, items)
        finally:
            if was_training:
                model.train()
        self.last_work = {"items_total": len(items), "items_local": local.get("items_local", 0)}
        by_job: dict[int, list[Any]] = {}
        k = 0
        for group in members:
            n = len(jobs[group[0]].rows)
            for j in group:
                by_job[j] = [r[jobs[j].kind] for r in results[k : k + n]]
            k += n
        out = []
        for j, job in enumerate(jobs):
            res = by_job[j]
            ok = [(int(r), v) for r, v in zip(job.rows, res) if not _is_failure(v)]
            failures = [v["error"] for v in res if _is_failure(v)]
            arrays: dict[str, np.ndarray] = {"rows": np.array([r for r, _ in ok], dtype=np.int64)}
            if job.kind == "nll":
                arrays["nll"] = np.array([v for _, v in ok], dtype=np.float64)
            elif job.kind == "text":
                arrays["q"] = _stack([v[0] for _, v in ok])
                arrays["a"] = _stack([v[1] for _, v in ok])
            else:
                arrays["i"] = _stack([v for _, v in ok])
            out.append(({"failures": failures}, arrays))
        return out

    def _work(
        self,
        jobs: list[_Job],
        members: list[list[int]],
        chunk: list[tuple[int, int]],
        model: Any,
        processing_class: Any,
    ) -> list[dict[str, Any]]:
        """This rank's share: consecutive rows of the same dataset are read and computed in batches; one
        `{kind: value or failure}` per row."""
        from tqdm.auto import tqdm

        cfg = self.settings
        embedder = FieldEmbedder(model, processing_class, cfg.embedding)
        out: list[dict[str, Any]] = []
        show = cfg.progress and distributed.is_main_process()
        bar = tqdm(total=len(chunk), desc="DataProphet signals", disable=not show)
        read = max(cfg.perplexity.batch_size, cfg.embedding.batch_size) * 4
        for u, group in itertools.groupby(chunk, key=lambda item: item[0]):
            first = jobs[members[u][0]]
            kinds = [jobs[j].kind for j in members[u]]
            row_ids = [r for _, r in group]
            for start in range(0, len(row_ids), read):
                ids = row_ids[start : start + read]
                bar.set_postfix_str(f"{first.role} {first.name}: {'+'.join(kinds)}")
                out += self._compute_rows(first, kinds, ids, model, processing_class, embedder)
                bar.update(len(ids))
        bar.close()
        return out

    def _compute_rows(
        self, job: _Job, kinds: list[str], ids: list[int], model, processing_class, embedder: FieldEmbedder
    ) -> list[dict[str, Any]]:
        raw = job.dataset.with_format("arrow")[ids].to_pylist()
        results: list[dict[str, Any]] = [{} for _ in ids]
        text_k, text_f = [], []  # rows whose Q/A are embedded
        fwd_k, fwd_rows = [], []  # rows that go through the model with their images (NLL and/or image vector)
        for k, (r, row) in enumerate(zip(ids, raw)):
            try:
                f = extract_fields(row, job.name, r)
            except DataError as err:
                for kind in kinds:
                    results[k][kind] = {"error": _failure(err, kind)}
                continue
            if "text" in kinds:
                text_k.append(k)
                text_f.append(f)
            if "nll" not in kinds and "image" not in kinds:
                continue
            try:
                decoded = []
                for im in row_images(row):
                    try:
                        decoded.append(as_pil(im))
                    except Exception as err:  # PIL raises several types for corrupt data
                        raise DataError(
                            job.name, r, "images", f"image fails to decode ({type(err).__name__}: {err})"
                        ) from None
            except DataError as err:
                for kind in ("nll", "image"):
                    if kind in kinds:
                        results[k][kind] = {"error": _failure(err, kind)}
                continue
            if "image" in kinds and not decoded:
                results[k]["image"] = {
                    "error": _failure(DataError(job.name, r, "images", "row has no image"), "image")
                }
                if "nll" not in kinds:
                    continue
            row = {**row, "images": decoded}
            row.pop("image", None)
            fwd_k.append(k)
            fwd_rows.append(row)
        if text_k:
            n = len(text_f)
            vectors = embedder.embed_texts([f.question for f in text_f] + [f.answer for f in text_f])
            for k, q, a in zip(text_k, vectors[:n], vectors[n:]):
                results[k]["text"] = (q, a)
        if fwd_k:
            fwd_ids = [ids[k] for k in fwd_k]
            want_image = "image" in kinds
            if "nll" in kinds:
                values = self._forward(job.name, fwd_rows, fwd_ids, want_image, model, processing_class, embedder)
            else:
                values = [(None, v) for v in embedder.embed_images([row["images"] for row in fwd_rows])]
            for k, (nll, image) in zip(fwd_k, values):
                if nll is not None:
                    results[k]["nll"] = nll
                if want_image and "image" not in results[k]:
                    results[k]["image"] = image
        return results

    def _forward(
        self, name: str, rows: list[dict], ids: list[int], want_image: bool, model, processing_class, embedder
    ) -> list[tuple[Any, Any]]:
        """`(nll, image vector)` per row (a failure dict in place of a value that could not be computed): one
        forward per batch gives both ([`mixwise.perplexity.forward_nll`])."""
        cfg = self.settings.perplexity
        out: list[tuple[Any, Any]] = []
        for start in range(0, len(rows), cfg.batch_size):
            chunk, chunk_ids = rows[start : start + cfg.batch_size], ids[start : start + cfg.batch_size]
            try:
                out += self._forward_batch(name, chunk, want_image, model, processing_class, embedder)
                continue
            except DataError:
                pass
            for row, r in zip(chunk, chunk_ids):  # a bad row in the batch: find it (and any others) one at a time
                try:
                    out += self._forward_batch(name, [row], want_image, model, processing_class, embedder)
                except DataError as err:
                    err = DataError(name, r, err.field, err.problem)
                    image = None
                    if want_image and row["images"]:  # the row's image signal does not depend on its text
                        image = embedder.embed_images([row["images"]])[0]
                    out.append(({"error": _failure(err, "nll")}, image))
        return out

    def _forward_batch(self, name, rows, want_image, model, processing_class, embedder) -> list[tuple[Any, Any]]:
        cfg = self.settings.perplexity
        batch = encode_rows(rows, processing_class, max_length=cfg.max_length, source=name)
        nll, image_out = forward_nll(model, batch, image_features=want_image)
        images: list[Any] = [None] * len(rows)
        counts = [len(row["images"]) for row in rows]
        if want_image and all(counts):  # (a batch mixing rows with and without images fails in encode_rows)
            if image_out is not None:
                per_image = embedder.image_vectors(image_out, sum(counts), batch.get("image_grid_thw"))
                images = embedder.sample_vectors(per_image, counts)
            else:  # the model cannot take precomputed image features: a separate image pass
                images = list(embedder.embed_images([row["images"] for row in rows]))
        return [(float(x), v) for x, v in zip(nll.tolist(), images)]

    # -- terms ------------------------------------------------------------------------------------------------------

    def _result(
        self, src: dict[str, Any], tgt: dict[str, Any], signals: dict[tuple[str, str], DatasetSignals]
    ) -> DataProphetResult:
        cfg = self.settings
        terms = cfg.terms
        S, T = list(src), list(tgt)

        def sim(key: str) -> Matrix | None:
            if not getattr(terms, f"{key}sim"):
                return None
            ms = {s: signals[("source", s)].mean(key) for s in S}
            mt = {t: signals[("target", t)].mean(key) for t in T}
            return Matrix(S, T, np.array([[float(ms[s] @ mt[t]) for t in T] for s in S]))

        ppl_s = {s: signals[("source", s)].ppl for s in S} if terms.ppl else {}
        ppl_t = {t: signals[("target", t)].ppl for t in T} if terms.ppl else {}
        sil, ent = {}, {}
        if terms.diversity:
            for s in S:
                d = diversity(
                    signals[("source", s)].z(), cfg.n_clusters, seed=cfg.seed, n_init=cfg.kmeans_n_init, name=s
                )
                sil[s], ent[s] = d.silhouette, d.entropy
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
        pool_named, tgt_named = _named(pool, "source"), _named(targets, "target")
        if not pool_named or not tgt_named:
            raise ValueError("instance scoring needs a pool and at least one target")
        specs = [("source", n, ds, None) for n, ds in pool_named.items()]
        specs += [("target", n, ds, cfg.subsample) for n, ds in tgt_named.items()]
        signals, _, _ = self._signals(specs, terms, model, processing_class, model_id)
        stats = {}
        for t in tgt_named:
            sig = signals[("target", t)]
            stats[t] = {"q": sig.mean("q"), "a": sig.mean("a"), "i": sig.mean("i")}
            stats[t]["ppl"] = sig.ppl if terms.ppl else None
        names: list[str] = []
        rows: list[int] = []
        parts = []
        for s in pool_named:
            sig = signals[("source", s)]
            keep = _common_rows(sig)
            sub = {k: _take(sig, k, keep) for k in ("q", "a", "i", "nll")}
            parts.append(instance_scores(sub["q"], sub["a"], sub["i"], sub["nll"], stats, terms).values)
            names += [s] * len(keep)
            rows += [int(r) for r in keep]
        values = np.concatenate(parts)
        scores = Matrix([f"{s}/{r}" for s, r in zip(names, rows)], list(stats), values)
        lam = np.ones(len(stats))
        if cfg.combine == "weighted":
            lam = np.array([float(cfg.target_weights.get(t, 0.0)) for t in stats])
        combined = values @ (lam / lam.sum())
        return InstanceScores(sources=names, rows=rows, scores=scores, combined=combined)


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
        rows = scores.select(top_k=context.budget)
        kwargs = _base_kwargs(self, context)
        kwargs["extra"] = {
            "instance_scores": {
                "targets": scores.scores.cols,
                "selected_min_score": float(np.sort(scores.combined)[::-1][context.budget - 1]),
            }
        }
        return Plan.from_rows(rows, context.sizes, **kwargs)


# ------------------------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------------------------


def _named(data: Any, role: str) -> dict[str, datasets.Dataset]:
    if isinstance(data, Mapping):
        out = {}
        for name, ds in data.items():
            ds = ds.dataset if isinstance(ds, Source) else ds
            if not isinstance(ds, datasets.Dataset):
                raise TypeError(f"{role} '{name}': expected a datasets.Dataset, got {type(ds).__name__}")
            out[str(name)] = ds
        return out
    out = {}
    for s in data:
        if not isinstance(s, Source):
            raise TypeError(
                f"expected Source objects or a {{name: Dataset}} mapping of {role}s, got {type(s).__name__}"
            )
        out[s.name] = s.dataset
    return out


def _stack(vectors: list[np.ndarray]) -> np.ndarray:
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(vectors).astype(np.float32)


def _is_failure(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


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


# ------------------------------------------------------------------------------------------------------------------
# `mixwise score`
# ------------------------------------------------------------------------------------------------------------------


def model_fingerprint_id(path: str | os.PathLike) -> str:
    """A model directory's id for caches: its absolute path plus the size and mtime of its weight/config files (so
    that retraining into the same directory invalidates cached signals)."""
    path = os.path.abspath(os.fspath(path))
    stats = []
    for name in sorted(os.listdir(path)):
        if name.endswith((".safetensors", ".bin", ".json")):
            st = os.stat(os.path.join(path, name))
            stats.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return f"{path}@{hashlib.sha256('|'.join(stats).encode()).hexdigest()[:12]}"


def load_model(path: str | os.PathLike, device: str | None = None) -> tuple[Any, Any]:
    """`(model, processing_class)` from a local directory: an image-text-to-text model if it is one, else a causal
    LM; the processor (or the tokenizer for text-only models). Evaluation mode, on `device` (default: cuda if
    available)."""
    import torch
    import transformers

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model directory {path!r} does not exist")
    try:
        model = transformers.AutoModelForImageTextToText.from_pretrained(path)
    except (ValueError, KeyError, OSError):
        model = transformers.AutoModelForCausalLM.from_pretrained(path)
    try:
        processor = transformers.AutoProcessor.from_pretrained(path)
    except (ValueError, KeyError, OSError, TypeError):
        from . import testing  # noqa: F401 - registers the zoo's image-only Qwen2-VL processor

        try:
            processor = transformers.AutoProcessor.from_pretrained(path)
        except (ValueError, KeyError, OSError, TypeError):
            processor = transformers.AutoTokenizer.from_pretrained(path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), processor


def load_target(path: str | os.PathLike, split: str | None = None) -> Source:
    """A target saved with `save_to_disk`: a `Dataset`, or the `split` of a `DatasetDict` (default: `validation`,
    else `test`)."""
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(f"target directory {p!r} does not exist")
    ds = datasets.load_from_disk(p)
    name = os.path.basename(os.path.normpath(p))
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            split = next((s for s in ("validation", "test") if s in ds), None)
            if split is None:
                raise KeyError(f"target {p!r} has neither a validation nor a test split ({list(ds)}); pass a split")
        if split not in ds:
            raise KeyError(f"target {p!r} has no split {split!r}; splits: {list(ds)}")
        ds = ds[split]
    return Source(name, ds, split=split, role="target")


def settings_from_score_config(cfg: Any) -> DataProphetConfig:
    """The [`DataProphetConfig`] a `mixwise score` command line describes (see `mixwise.configs.ScoreConfig`)."""
    from .embeddings import bundled_text_encoder_path

    target_weights = None
    if cfg.target_weights:
        target_weights = {}
        for item in cfg.target_weights:
            name, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"--target_weights expects NAME=WEIGHT items, got {item!r}")
            target_weights[name] = float(value)
    text_encoder = bundled_text_encoder_path() if cfg.text_encoder == "minilm" else cfg.text_encoder
    return DataProphetConfig(
        subsample=cfg.subsample or None,
        seed=cfg.seed,
        terms=Terms(
            qsim=not cfg.no_qsim,
            asim=not cfg.no_asim,
            isim=not cfg.no_isim,
            ppl=not cfg.no_ppl,
            diversity=not cfg.no_diversity,
        ),
        n_clusters=cfg.n_clusters,
        sharpen=cfg.sharpen,
        power=cfg.power,
        temperature=cfg.temperature,
        combine="weighted" if target_weights else "mean",
        target_weights=target_weights,
        embedding=EmbeddingConfig(
            text_encoder=text_encoder,
            text_layer=cfg.text_layer,
            text_pooling=cfg.text_pooling,
            image_feature=cfg.image_feature,
            image_layer=cfg.image_layer,
            batch_size=cfg.batch_size,
        ),
        perplexity=PerplexityConfig(batch_size=cfg.batch_size, max_length=cfg.max_length),
        on_error=cfg.on_error,
        cache_dir=cfg.cache_dir or os.path.join(cfg.out, "cache"),
    )


def run_score(cfg: Any) -> dict[str, Any]:
    """`mixwise score`: score sources for targets with DataProphet and write, into `cfg.out`:

    `metric.csv` (rows sources, columns targets), `term_<factor>.csv` (qsim, asim, isim, ppl_ratio, diversity:
    M is their cell-wise product), `signals.csv` (PPL, silhouette, entropy per dataset), `weights.csv` (per-target
    and combined weights), `selection.json` (the plan under the budget), `heatmap.png` and `mixture.yaml` (TRL's
    `datasets:` mixture with per-source fractions).
    """
    import yaml

    from .sources import load_source

    if not cfg.model or not cfg.sources or not cfg.targets or not cfg.budget or cfg.budget <= 0:
        raise SystemExit("mixwise score: --model, --sources, --targets and a positive --budget are required")
    sources = [load_source(p, split=cfg.split) for p in cfg.sources]
    targets = [load_target(p, cfg.target_split) for p in cfg.targets]
    for role, group in (("source", sources), ("target", targets)):
        names = [s.name for s in group]
        if len(set(names)) != len(names):
            raise SystemExit(f"mixwise score: two {role} directories have the same name: {names}")
    settings = settings_from_score_config(cfg)
    model, processor = load_model(cfg.model, cfg.device)
    model_id = model_fingerprint_id(cfg.model)
    selector = DataProphet(settings)
    result = selector.score(sources, targets, model, processor, model_id=model_id)
    sizes = {s.name: len(s) for s in sources}
    fingerprints = {
        "data": {s.name: s.fingerprint for s in sources},
        "targets": {t.name: t.fingerprint for t in targets},
        "model": model_id,
    }
    plan = result.to_plan(sizes, cfg.budget, seed=cfg.seed, config=selector.config(), fingerprints=fingerprints)
    os.makedirs(cfg.out, exist_ok=True)
    paths = result.save(cfg.out)
    paths["selection"] = plan.save(cfg.out)
    mixture = {"datasets": plan.to_trl_mixture({s.name: os.path.abspath(p) for s, p in zip(sources, cfg.sources)})}
    paths["mixture"] = os.path.join(cfg.out, "mixture.yaml")
    with open(paths["mixture"], "w") as f:
        yaml.safe_dump(mixture, f, sort_keys=False)
    return {"result": result, "plan": plan, "paths": paths}
