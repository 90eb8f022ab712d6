"""DataProphet's allocation (Alg. 1) and instance selection (Alg. 2): pure functions of the metric.

**Allocation (Alg. 1).** Per target t: `w_i(t) = f(M(s_i→t)) / Σ_j f(M(s_j→t))`, with `f` the identity (the paper:
proportional) or a **sharpening**: `f(m) = m^p` (`sharpen="power"`) or `f(m) = exp(m / T)` (`sharpen="temperature"`,
a softmax over sources). Negative scores are clipped to 0 for the identity and power rules. **Several targets**:
`w_i = Σ_t λ_t w_i(t)` with `λ` uniform or the user's per-target weights (normalized to sum 1).

**Instance-level score (Alg. 2)**, for single samples u::

    m(u→t) = QSim(u,t) · ASim(u,t) · ISim(u,t) · PPL({u}) / PPL(t)

with `Sim_X(u,t) = unit(x_u) · mean_unit_X(t)` and `PPL({u}) = exp(nll(u))`, no diversity term.

**mixwise's fixes** (allocation-stage options of [`DataProphetConfig`]; `preset="paper"` switches them all off):

* *centred similarity* (`centre="pooled"`): `Sim_X(s,t) = cos(μ_s − c, μ_t − c)` with `μ` a dataset's mean unit
  vector and `c` the mean of the `μ` of every source and target ([`centred_similarity`]); per sample,
  `cos(unit(x_u) − c, μ_t − c)`. Uncentred, every pair of toy families scored 0.999-1.000 (the features share one
  dominant direction): ISim carried no information.
* *sign-safe similarity* (`similarity_sign`): `clip` = `max(Sim, 0)`, `shift` = `(1 + Sim) / 2` ([`sign_safe`]);
  the paper's signed product lets two negative similarities count as agreement.
* *PPL guard* (`ppl_guard`) on `r = PPL(s)/PPL(t)` ([`guard_ppl_ratio`]): `cap` = `min(r, C)`, `band` = `r` for
  `r ≤ C`, `C² / r` above. A source the base model finds much harder than the target — off-distribution or
  mislabelled — is not rewarded for it (unguarded, unrelated photos got 32-65% of a toy budget).
* *distinct rows* (`dedup_rows`): a source gets at most as many rows as it has distinct rows, the excess goes to the
  other sources by their weights ([`capped_allocation`]); instance selection takes one copy of a duplicated row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..plan import allocate
from ..signals.embeddings import l2_normalize
from .config import Terms
from .tau import Matrix

__all__ = [
    "capped_allocation",
    "centred_similarity",
    "combine_targets",
    "guard_ppl_ratio",
    "instance_scores",
    "per_target_weights",
    "select_instances",
    "sharpen_scores",
    "sign_safe",
]


def sign_safe(sim: np.ndarray, rule: str = "signed") -> np.ndarray:
    """A similarity made safe to multiply: `signed` (unchanged, the paper), `clip` (`max(sim, 0)`) or `shift`
    (`(1 + sim) / 2`, in [0, 1] for a cosine)."""
    sim = np.asarray(sim, dtype=np.float64)
    if rule == "signed":
        return sim
    if rule == "clip":
        return np.clip(sim, 0.0, None)
    if rule == "shift":
        return (1.0 + sim) / 2.0
    raise ValueError(f"unknown similarity_sign {rule!r}; expected signed, clip or shift")


def guard_ppl_ratio(ratio: np.ndarray, guard: str = "none", cap: float = 2.0) -> np.ndarray:
    """The perplexity factor `r = PPL(s)/PPL(t)` under a guard: `none` (r, the paper), `cap` (`min(r, C)`) or `band`
    (`r` for `r ≤ C`, `C² / r` above: continuous at C, falling for data the model finds far harder than the
    target)."""
    r = np.asarray(ratio, dtype=np.float64)
    if guard == "none":
        return r
    if guard == "cap":
        return np.minimum(r, cap)
    if guard == "band":
        return np.where(r <= cap, r, cap * cap / np.maximum(r, 1e-300))
    raise ValueError(f"unknown ppl_guard {guard!r}; expected none, cap or band")


def centred_similarity(
    source_means: Mapping[str, np.ndarray], target_means: Mapping[str, np.ndarray], centre: np.ndarray | None = None
) -> Matrix:
    """`cos(μ_s − c, μ_t − c)` for every source × target, `c` the mean of every given `μ` (sources and targets, each
    dataset counted once) unless given. A dataset whose centred mean is zero gets similarity 0."""
    if centre is None:
        centre = np.mean([*source_means.values(), *target_means.values()], axis=0)
    cs = {s: l2_normalize(np.asarray(m, np.float64) - centre) for s, m in source_means.items()}
    ct = {t: l2_normalize(np.asarray(m, np.float64) - centre) for t, m in target_means.items()}
    values = np.array([[float(cs[s] @ ct[t]) for t in ct] for s in cs])
    return Matrix(list(cs), list(ct), values)


def capped_allocation(weights: Mapping[str, float], caps: Mapping[str, int], budget: int) -> dict[str, int]:
    """Integer counts summing to `budget`, in proportion to `weights` but never above a source's cap (its number of
    distinct rows): capped sources are fixed at their cap and the rest of the budget is re-split over the others by
    their weights (largest remainder), until no count exceeds its cap. When the caps of the positive-weight sources
    sum to less than the budget, those sources get their caps and the remainder is split by the weights again
    (then a source repeats rows: the budget forces it)."""
    names = list(weights)
    counts = {n: 0 for n in names}
    free = {n: float(w) for n, w in weights.items() if w > 0}
    left = int(budget)
    while left > 0 and free:
        split = allocate(free, left)
        over = [n for n in free if counts[n] + split[n] > caps[n]]
        if not over:
            for n in free:
                counts[n] += split[n]
            left = 0
            break
        for n in over:
            left -= caps[n] - counts[n]
            counts[n] = caps[n]
            del free[n]
    if left > 0:  # every positive-weight source is at its cap: repeats are forced
        positive = {n: float(w) for n, w in weights.items() if w > 0}
        for n, c in allocate(positive, left).items():
            counts[n] += c
    return counts


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
    centres: Mapping[str, np.ndarray] | None = None,
    similarity_sign: str = "signed",
    ppl_guard: str = "none",
    ppl_cap: float = 2.0,
) -> Matrix:
    """Alg. 2: `m(u→t) = QSim(u,t)·ASim(u,t)·ISim(u,t)·PPL({u})/PPL(t)` for every sample u and target t.

    Args:
        q, a, i: per-sample field embeddings of the pool, `(n, d)` (normalized here); `None` when the term is off.
        nll: per-sample mean answer-token NLL of the pool (`PPL({u}) = exp(nll_u)`); `None` when PPL is off.
        targets: `{name: {"q": mean unit vector, "a": ..., "i": ..., "ppl": PPL(t)}}`.
        terms: switches (diversity is never part of the instance score).
        centres: `{"q"/"a"/"i": c}`: centred similarity `cos(unit(x_u) − c, μ_t − c)` (None: the paper's dot).
        similarity_sign, ppl_guard, ppl_cap: see [`sign_safe`], [`guard_ppl_ratio`] (defaults: the paper).

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
                u, mu = l2_normalize(x), np.asarray(stats[key], dtype=np.float64)
                if centres is not None and centres.get(key) is not None:
                    u, mu = l2_normalize(u - centres[key]), l2_normalize(mu - centres[key])
                score = score * sign_safe(u @ mu, similarity_sign)
        if terms.ppl:
            if nll is None:
                raise ValueError("the ppl term is on but per-sample NLLs are missing")
            ratio = np.exp(np.asarray(nll, dtype=np.float64)) / float(stats["ppl"])
            score = score * guard_ppl_ratio(ratio, ppl_guard, ppl_cap)
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
