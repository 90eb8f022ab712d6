"""DataProphet's allocation (Alg. 1) and instance selection (Alg. 2): pure functions of the metric.

**Allocation (Alg. 1).** Per target t: `w_i(t) = f(M(s_i→t)) / Σ_j f(M(s_j→t))`, with `f` the identity (the paper:
proportional) or a **sharpening**: `f(m) = m^p` (`sharpen="power"`) or `f(m) = exp(m / T)` (`sharpen="temperature"`,
a softmax over sources). Negative scores are clipped to 0 for the identity and power rules. **Several targets**:
`w_i = Σ_t λ_t w_i(t)` with `λ` uniform or the user's per-target weights (normalized to sum 1).

**Instance-level score (Alg. 2)**, for single samples u::

    m(u→t) = QSim(u,t) · ASim(u,t) · ISim(u,t) · PPL({u}) / PPL(t)

with `Sim_X(u,t) = unit(x_u) · mean_unit_X(t)` and `PPL({u}) = exp(nll(u))`, no diversity term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..signals.embeddings import l2_normalize
from .config import Terms
from .tau import Matrix

__all__ = ["combine_targets", "instance_scores", "per_target_weights", "select_instances", "sharpen_scores"]


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
