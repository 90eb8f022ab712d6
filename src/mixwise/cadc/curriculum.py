"""CADC's pure functions: trajectories → capabilities (discovery) → per-row attribution → curation → stages.

See the package docstring for the definitions; every function here works on arrays (or datastores, streamed) and
needs no model.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..mixture import Mixture
from ..plan import Plan, allocate
from ..signals.influence import stream_scores, task_means
from .config import BUDGET_SPLITS, STAGE_ORDERS

__all__ = [
    "Curation",
    "Discovery",
    "assign",
    "build_trajectories",
    "capability_means",
    "curate",
    "discover_capabilities",
    "normalized_weights",
    "split_budget",
    "staged_plan",
    "subtask_means",
    "trajectory_influence",
    "trajectory_similarity",
]


def subtask_means(
    features: np.ndarray,
    norms: np.ndarray | None,
    labels: Sequence[Any] | None,
    target: str,
    expected: Sequence[str] | None = None,
) -> tuple[list[str], np.ndarray]:
    """Mean unit validation feature per subtask of one target at one checkpoint (ICONS's `task_means`), with the
    CADC checks: a row without a subtask label, or an `expected` subtask without validation rows, is an error naming
    the target and the subtask."""
    if labels is not None:
        missing = [j for j, s in enumerate(labels) if s is None or str(s) == ""]
        if missing:
            raise ValueError(f"target '{target}': validation rows {missing[:5]} have no subtask label")
        present = {str(s) for s in labels}
        for s in expected or ():
            if str(s) not in present:
                raise ValueError(f"target '{target}', subtask '{s}': no validation rows (cannot build its trajectory)")
    elif expected:
        raise ValueError(f"target '{target}' lists subtasks {list(expected)} but has no subtask column")
    return task_means(features, norms, labels, name=target)


def build_trajectories(per_checkpoint: Sequence[np.ndarray], block_normalize: bool = True) -> np.ndarray:
    """`(S, T·d')` trajectories from `T` arrays of per-subtask mean features `(S, d')` (see module docstring)."""
    if not per_checkpoint:
        raise ValueError("no checkpoint features: a trajectory needs at least one checkpoint")
    blocks = []
    for m in per_checkpoint:
        m = np.asarray(m, dtype=np.float64)
        if block_normalize:
            m = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
        blocks.append(m)
    return np.concatenate(blocks, axis=1)


def trajectory_similarity(trajectories: np.ndarray) -> np.ndarray:
    """Cosine similarity `(S, S)` of trajectories."""
    t = np.asarray(trajectories, dtype=np.float64)
    unit = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    sim = unit @ unit.T
    return np.clip(sim, -1.0, 1.0)


@dataclass
class Discovery:
    """Subtask → capability assignment. `labels[s]` is subtask `s`'s capability index."""

    subtasks: list[str]
    labels: np.ndarray
    similarity: np.ndarray
    method: str
    n_edges: int

    @property
    def n_capabilities(self) -> int:
        return int(self.labels.max()) + 1

    @property
    def names(self) -> list[str]:
        return [f"c{k}" for k in range(self.n_capabilities)]

    def members(self) -> dict[str, list[str]]:
        """`{capability: [subtasks]}`."""
        return {f"c{k}": [s for s, lab in zip(self.subtasks, self.labels) if lab == k] for k in range(len(self.names))}

    def capability_map(self) -> dict[str, dict[str, int]]:
        """`{subtask: {capability: 0/1}}` (the report's subtask × capability table)."""
        return {s: {c: int(lab == k) for k, c in enumerate(self.names)} for s, lab in zip(self.subtasks, self.labels)}


def _relabel(groups: Sequence[Sequence[int]], n: int) -> np.ndarray:
    """Capability indices ordered by each group's smallest subtask index."""
    ordered = sorted((sorted(g) for g in groups if len(g)), key=lambda g: g[0])
    labels = np.full(n, -1, np.int64)
    for k, g in enumerate(ordered):
        labels[list(g)] = k
    return labels


def discover_capabilities(
    trajectories: np.ndarray,
    subtasks: Sequence[str],
    threshold: float = 0.0,
    n_capabilities: int | None = None,
    resolution: float = 1.0,
    seed: int = 0,
) -> Discovery:
    """Cluster subtasks into capabilities by trajectory cosine similarity (module docstring, step 2)."""
    subtasks = list(subtasks)
    n = len(subtasks)
    if n == 0:
        raise ValueError("no subtasks to discover capabilities from")
    if len(trajectories) != n:
        raise ValueError(f"{len(trajectories)} trajectories for {n} subtasks")
    sim = trajectory_similarity(trajectories)
    iu = np.triu_indices(n, k=1)
    above = sim[iu] > threshold
    n_edges = int(above.sum())
    if n_capabilities is not None:
        if n_capabilities > n:
            raise ValueError(f"n_capabilities={n_capabilities} but there are only {n} subtasks")
        if n_capabilities == 1 or n == 1:
            labels = np.zeros(n, np.int64)
        elif n_capabilities == n:
            labels = np.arange(n, dtype=np.int64)
        else:
            from sklearn.cluster import AgglomerativeClustering

            dist = np.clip(1.0 - sim, 0.0, 2.0)
            np.fill_diagonal(dist, 0.0)
            raw = AgglomerativeClustering(
                n_clusters=n_capabilities, metric="precomputed", linkage="average"
            ).fit_predict(dist)
            labels = _relabel([np.nonzero(raw == c)[0].tolist() for c in np.unique(raw)], n)
        return Discovery(subtasks, labels, sim, "agglomerative", n_edges)
    if n_edges == 0:
        if n > 1:
            warnings.warn(
                f"CADC discovery: no pair of the {n} subtasks has trajectory similarity above threshold "
                f"{threshold} (max {sim[iu].max():.3f}); every subtask is its own capability",
                UserWarning,
                stacklevel=2,
            )
        return Discovery(subtasks, np.arange(n, dtype=np.int64), sim, "louvain", 0)
    import networkx as nx
    from networkx.algorithms.community import louvain_communities

    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for a, b, keep in zip(iu[0], iu[1], above):
        if keep:
            graph.add_edge(int(a), int(b), weight=float(sim[a, b]))
    groups = louvain_communities(graph, weight="weight", resolution=resolution, seed=seed)
    return Discovery(subtasks, _relabel([list(g) for g in groups], n), sim, "louvain", n_edges)


def capability_means(per_checkpoint: Sequence[np.ndarray], labels: np.ndarray) -> list[np.ndarray]:
    """Per checkpoint, `(K, d')` capability means `ḡ_k(θ_t) = mean_{s∈k} ḡ_s(θ_t)`."""
    labels = np.asarray(labels)
    k_caps = int(labels.max()) + 1
    return [
        np.stack([np.asarray(m, np.float64)[labels == k].mean(axis=0) for k in range(k_caps)]).astype(np.float32)
        for m in per_checkpoint
    ]


def normalized_weights(weights: Sequence[float] | None, t: int) -> np.ndarray:
    """`t` checkpoint weights normalised to sum to 1 (default: equal); refuses negative or all-zero weights."""
    w = np.ones(t) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != t or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"checkpoint weights must be {t} non-negative numbers with a positive sum, got {weights}")
    return w / w.sum()


def trajectory_influence(
    pool: Sequence[Any], cap_means: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(Inf (N, K), SI_t (T, N))`: `Inf_k(z) = Σ_t w_t ⟨ĝ_z(θ_t), ḡ_k(θ_t)⟩` and per-checkpoint self-influence
    `SI_t(z) = ‖g_z(θ_t)‖²`. `pool[t]` is checkpoint t's pool datastore or `(unit features (N, d'), norms (N,))`.
    Rows skipped while featurizing get NaN."""
    if len(pool) != len(cap_means) or not pool:
        raise ValueError(f"{len(pool)} pool feature sets for {len(cap_means)} checkpoints")
    w = normalized_weights(weights, len(pool))
    total = None
    self_inf = []
    for wt, p, m in zip(w, pool, cap_means):
        s, sq = stream_scores(p, m, return_norms=True)
        total = wt * s.astype(np.float64) if total is None else total + wt * s
        self_inf.append(sq)
    return total.astype(np.float32), np.stack(self_inf)


def assign(influence: np.ndarray) -> np.ndarray:
    """Capability of every row: `argmax_k Inf_k(z)` (ties: lower k; NaN rows: -1)."""
    valid = np.isfinite(influence).all(axis=1)
    out = np.full(len(influence), -1, np.int64)
    out[valid] = np.argmax(influence[valid], axis=1)
    return out


def split_budget(
    budget: int,
    pool_sizes: Sequence[int],
    mode: str = "equal",
    weights: Sequence[float] | None = None,
) -> list[int]:
    """Exact per-capability counts summing to `budget` (largest remainder), capped at each pool's size; what a
    capped capability cannot take is re-split among the others in proportion to their weights."""
    sizes = [int(s) for s in pool_sizes]
    k_caps = len(sizes)
    if budget > sum(sizes):
        raise ValueError(f"cannot select {budget} rows: the capability pools hold {sum(sizes)} rows with features")
    if mode == "equal":
        w = [1.0] * k_caps
    elif mode == "proportional":
        w = [float(s) for s in sizes]
    elif mode == "custom":
        if weights is None or len(weights) != k_caps:
            raise ValueError(f"custom budget weights must give {k_caps} numbers, got {weights}")
        w = [float(x) for x in weights]
        if any(x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"custom budget weights must be non-negative with a positive sum, got {weights}")
    else:
        raise ValueError(f"budget split must be one of {BUDGET_SPLITS}, got {mode!r}")
    counts = [0] * k_caps
    open_ = [k for k in range(k_caps) if sizes[k] > 0 and w[k] > 0]
    left = budget
    while left > 0:
        if not open_:  # only zero-weight pools still have room
            open_ = [k for k in range(k_caps) if counts[k] < sizes[k]]
            w = [1.0] * k_caps
        share = allocate({str(k): w[k] for k in open_}, left)
        for k in open_:
            counts[k] += share[str(k)]
        over = sum(max(0, counts[k] - sizes[k]) for k in open_)
        for k in open_:
            counts[k] = min(counts[k], sizes[k])
        open_ = [k for k in open_ if counts[k] < sizes[k]]
        left = over
    return counts


@dataclass
class Curation:
    """Selected rows per capability (best first), the stage order and the numbers behind it."""

    rows: list[np.ndarray]
    order: list[int]
    counts: list[int]
    self_influence_curves: list[list[float]]
    change: list[float]
    mean_self_influence: list[float]


def curate(
    influence: np.ndarray,
    self_influence: np.ndarray,
    budget: int,
    weights: Sequence[float] | None = None,
    budget_split: str = "equal",
    budget_weights: Sequence[float] | None = None,
    stage_order: str | Sequence[int] = "fastest_drop",
) -> Curation:
    """Budget split, top rows by trajectory influence inside each capability pool, stage order by self-influence
    (module docstring, step 4). `self_influence` is `SI_t(z)`, shape `(T, N)`; `stage_order` may be a list of
    capability indices."""
    influence = np.asarray(influence, np.float64)
    si = np.asarray(self_influence, np.float64)
    k_caps = influence.shape[1]
    cap = assign(influence)
    pools = []
    for k in range(k_caps):
        idx = np.nonzero(cap == k)[0]
        pools.append(idx[np.lexsort((idx, -influence[idx, k]))])
    counts = split_budget(budget, [len(p) for p in pools], budget_split, budget_weights)
    rows = [p[:c] for p, c in zip(pools, counts)]
    w = normalized_weights(weights, si.shape[0])
    curves, change, mean_si = [], [], []
    for r in rows:
        curve = si[:, r].mean(axis=1) if len(r) else np.zeros(si.shape[0])
        curves.append(curve.tolist())
        change.append(float((curve[-1] - curve[0]) / curve[0]) if len(r) and curve[0] > 0 else 0.0)
        mean_si.append(float(w @ curve))
    nonempty = [k for k in range(k_caps) if counts[k] > 0]
    if isinstance(stage_order, str):
        if stage_order == "index":
            order = nonempty
        else:
            sign = 1.0 if stage_order == "fastest_drop" else -1.0
            if stage_order not in ("fastest_drop", "slowest_drop"):
                raise ValueError(f"stage_order must be one of {STAGE_ORDERS} or a list, got {stage_order!r}")
            order = sorted(nonempty, key=lambda k: (sign * change[k], -mean_si[k], k))
    else:
        given = [int(k) for k in stage_order]
        if sorted(given) != list(range(k_caps)):
            raise ValueError(f"stage_order must list every capability once (0..{k_caps - 1}), got {given}")
        order = [k for k in given if counts[k] > 0]
    return Curation(rows, order, counts, curves, change, mean_si)


def staged_plan(
    curation: Curation, mixture: Mixture, names: Sequence[str] | None = None, **kwargs: Any
) -> tuple[Plan, list[dict[str, Any]]]:
    """`Plan.staged` with one per-sample stage per capability (in stage order) and the stage table."""
    names = list(names or [f"c{k}" for k in range(len(curation.rows))])
    stages, table = [], []
    for k in curation.order:
        per_source: dict[str, list[int]] = {n: [] for n in mixture.names}
        for i in sorted(curation.rows[k].tolist()):
            src, row = mixture.locate(int(i))
            per_source[src].append(row)
        stage_kwargs = {"method": kwargs.get("method", "cadc"), "seed": kwargs.get("seed", 0)}
        stages.append(Plan.from_rows(per_source, mixture.sizes, extra={"capability": names[k]}, **stage_kwargs))
        table.append(
            {
                "capability": names[k],
                "rows": int(curation.counts[k]),
                "per_source": {n: len(v) for n, v in per_source.items()},
                "self_influence_change": curation.change[k],
                "mean_self_influence": curation.mean_self_influence[k],
            }
        )
    return Plan.staged(stages, **kwargs), table
