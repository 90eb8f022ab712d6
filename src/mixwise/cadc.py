"""CADC: capability-attributed data curation (Li et al., "Uncovering Intrinsic Capabilities", SPEC section 3).

Only the abstract and figure captions are public; every decision marked **(assumed)** is ours and configurable
through [`CADCConfig`]. The pipeline ([`run_cadc`], or the [`CADC`] selector in any mixwise entry point):

1. **Trajectories.** Features come from ICONS's featurizer and datastores ([`mixwise.icons`]: warm-up LoRA, per-row
   LoRA gradients, seeded projection to `d'`, L2-normalised, stored with fp32 norms). The stores are laid out exactly
   as ICONS lays them out, so a CADC run after an ICONS run with the same settings recomputes nothing. For each
   target subtask `s` and warm-up checkpoint `t`: `ḡ_s(θ_t) = mean_{j∈s} ĝ_j(θ_t)` (mean of unit features,
   [`mixwise.influence.task_means`]). The trajectory is `τ_s = [ḡ_s(θ_1) / ‖·‖, …, ḡ_s(θ_T) / ‖·‖]` (each
   checkpoint block unit-normalised before concatenation so every checkpoint counts the same — **(assumed)**,
   `block_normalize`). Subtasks come from a target's subtask column (`Source.subtask_column` or `subtask_column`);
   a target without one is a single subtask named after the target — so the toy world's targets (no subtask column)
   are the subtasks of one combined target. With subtasks, they are named `target/subtask`.
2. **Discovery** ([`discover_capabilities`]). `S_ab = cos(τ_a, τ_b)`; a graph with an edge `a–b` (weight `S_ab`)
   when `S_ab > threshold` (default 0.0 **(assumed)**); Louvain communities
   (`networkx.algorithms.community.louvain_communities`, fixed `seed`, `resolution`), so K is found. With
   `n_capabilities=K`, agglomerative clustering (scikit-learn, average linkage on `1 − S`) gives exactly K.
   When no pair is above the threshold, every subtask is its own capability (a warning says so). Capabilities are
   numbered `c0, c1, …` by their first subtask in sorted subtask order (deterministic).
3. **Attribution** ([`trajectory_influence`]). Capability mean at checkpoint t: `ḡ_k(θ_t) = mean_{s∈k} ḡ_s(θ_t)`
   (each subtask counts the same **(assumed)**). Trajectory influence `Inf_k(z) = Σ_t w_t ⟨ĝ_z(θ_t), ḡ_k(θ_t)⟩`,
   `w_t` = the checkpoint's mean learning rate, normalised to sum to 1 (as ICONS/LESS combine checkpoints). Every
   pool row joins the pool of `argmax_k Inf_k(z)` (ties: lower k); the full `(N, K)` matrix is kept
   ([`CADCResult.add_columns`]: `cadc_capability`, `cadc_influence_<ck>`, `cadc_self_influence`).
4. **Curation** ([`curate`]). The budget is split over capabilities: `equal` (default, SPEC), `proportional` (to the
   capability pool sizes) or `custom` (`budget_weights`), exact integers by largest remainder; a share larger than
   its pool is capped and the rest re-split among the others. Inside each pool the rows with the highest `Inf_k`
   are taken (ties: row id). Self-influence `SI_t(z) = ‖g_z(θ_t)‖²` (the datastore's fp32 norms) gives
   `SI(z) = Σ_t w_t SI_t(z)` and, per capability, the curve `m_k(t) = mean over its selected rows of SI_t(z)` with
   relative change `Δ_k = (m_k(T) − m_k(1)) / m_k(1)`. Stage order (default `fastest_drop` **(assumed)**): ascending
   `Δ_k` — the capability whose self-influence falls fastest is learned first; ties (e.g. a single checkpoint,
   where every `Δ_k = 0`) by higher mean `SI`, then capability index. `slowest_drop`, `index` or an explicit list
   of capability names are the alternatives. The result is `Plan.staged([...])`, one per-sample stage per
   capability with at least one row, exact counts; the spine's [`~mixwise.MixtureSampler`] delivers the stages in
   order (each shuffled inside itself, resumable mid-stage).

**Single checkpoint.** With one checkpoint (e.g. a live model without warm-up, or an ICONS-preset warm-up of one
epoch) there is no trajectory: CADC falls back to single-checkpoint features with a `UserWarning` and records
`"trajectory": false` in the plan's `extra`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import datasets
import numpy as np

from .mixture import Mixture
from .plan import Plan, allocate
from .selectors import SelectionContext, _base_kwargs
from .sources import Source

BUDGET_SPLITS = ("equal", "proportional", "custom")
STAGE_ORDERS = ("fastest_drop", "slowest_drop", "index")


@dataclass
class CADCConfig:
    """Configuration of the CADC selector.

    Feature settings (`model_path` … `progress`) have the meaning of [`mixwise.icons.ICONSConfig`]'s fields of the
    same name; CADC always uses every warm-up checkpoint and gradient features.

    Attributes:
        warmup_preset: default `less` (a checkpoint per epoch, 4 epochs: a trajectory of T=4); `tiny-less` for tests.
        threshold: similarity graph edge threshold on `cos(τ_a, τ_b)` (assumed default 0.0).
        resolution: Louvain resolution (higher: more, smaller capabilities).
        n_capabilities: fix K (agglomerative clustering, average linkage on `1 − S`); `None`: Louvain finds K.
        community_seed: Louvain's seed.
        block_normalize: unit-normalise each checkpoint block of a trajectory before concatenating.
        subtasks: optional `{target: [expected subtask names]}`; a listed subtask without validation rows is an
            error naming target and subtask.
        budget_split: `equal` (default), `proportional` or `custom`.
        budget_weights: `custom` weights, `{capability name: weight}` or a list in capability order.
        stage_order: `fastest_drop` (default), `slowest_drop`, `index`, or a list of capability names.
    """

    model_path: str | None = None
    work_dir: str | None = None
    warmup_preset: str = "less"
    warmup: Any = None
    run_warmup: bool | None = None
    warmup_dir: str | None = None
    pool_mode: str = "sgd"
    target_mode: str = "sgd"
    proj_dim: int = 8192
    projector: str = "gaussian"
    proj_seed: int = 0
    subtask_column: str | dict[str, str] | None = None
    batch_size: int = 8
    max_length: int | None = None
    chunk_size: int = 256
    max_buffer_bytes: int = 1 << 30
    cache_bytes: int = 1 << 30
    on_error: str = "raise"
    device: str | None = None
    progress: bool = True
    threshold: float = 0.0
    resolution: float = 1.0
    n_capabilities: int | None = None
    community_seed: int = 0
    block_normalize: bool = True
    subtasks: dict[str, list[str]] | None = None
    budget_split: str = "equal"
    budget_weights: dict[str, float] | list[float] | None = None
    stage_order: str | list[str] = "fastest_drop"

    def __post_init__(self):
        if self.budget_split not in BUDGET_SPLITS:
            raise ValueError(f"budget_split must be one of {BUDGET_SPLITS}, got {self.budget_split!r}")
        if self.budget_split == "custom" and self.budget_weights is None:
            raise ValueError("budget_split='custom' needs budget_weights")
        if isinstance(self.stage_order, str) and self.stage_order not in STAGE_ORDERS:
            raise ValueError(f"stage_order must be one of {STAGE_ORDERS} or a list of capabilities")
        if self.n_capabilities is not None and self.n_capabilities < 1:
            raise ValueError(f"n_capabilities must be >= 1, got {self.n_capabilities}")
        self.icons_config()  # validates the feature settings

    def icons_config(self):
        """The ICONS configuration that produces (or reuses) the same datastores."""
        from .icons import ICONSConfig

        names = {f.name for f in fields(ICONSConfig)}
        kw = {k: v for k, v in asdict(self).items() if k in names}
        kw["warmup"] = self.warmup
        return ICONSConfig(**kw, checkpoints="all", signal="gradient")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warmup"] = asdict(self.icons_config().warmup_config())
        d.pop("progress")
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Pure functions: trajectories, discovery, attribution, curation
# ---------------------------------------------------------------------------------------------------------------------


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
    from .influence import task_means

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


def _norm_weights(weights: Sequence[float] | None, t: int) -> np.ndarray:
    w = np.ones(t) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != t or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"checkpoint weights must be {t} non-negative numbers with a positive sum, got {weights}")
    return w / w.sum()


def _stream(pool: Any, means: np.ndarray, block_rows: int = 16384) -> tuple[np.ndarray, np.ndarray]:
    """`(⟨ĝ_z, μ_k⟩ (N, K), ‖g_z‖² (N,))` from a datastore (streamed) or a `(features, norms)` pair of arrays."""
    means = np.ascontiguousarray(means, dtype=np.float32)
    if isinstance(pool, tuple):
        feats, norms = pool
        scores = np.asarray(feats, np.float32) @ means.T
        norms = np.asarray(norms, np.float64)
    else:
        scores = np.empty((pool.n_rows, means.shape[0]), np.float32)
        norms = np.empty(pool.n_rows, np.float64)
        for start, stop, f, nrm in pool.iter_blocks(block_rows):
            scores[start:stop] = f.astype(np.float32) @ means.T
            norms[start:stop] = nrm
    scores[~np.isfinite(norms)] = np.nan
    return scores, norms**2


def trajectory_influence(
    pool: Sequence[Any], cap_means: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """`(Inf (N, K), SI_t (T, N))`: `Inf_k(z) = Σ_t w_t ⟨ĝ_z(θ_t), ḡ_k(θ_t)⟩` and per-checkpoint self-influence
    `SI_t(z) = ‖g_z(θ_t)‖²`. `pool[t]` is checkpoint t's pool datastore or `(unit features (N, d'), norms (N,))`.
    Rows skipped while featurizing get NaN."""
    if len(pool) != len(cap_means) or not pool:
        raise ValueError(f"{len(pool)} pool feature sets for {len(cap_means)} checkpoints")
    w = _norm_weights(weights, len(pool))
    total = None
    self_inf = []
    for wt, p, m in zip(w, pool, cap_means):
        s, sq = _stream(p, m)
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
    w = _norm_weights(weights, si.shape[0])
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


# ---------------------------------------------------------------------------------------------------------------------
# Features (ICONS's featurizer and datastores)
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TrajectoryFeatures:
    """Per-checkpoint subtask means and pool stores (what the datastores hold; nothing recomputed)."""

    subtasks: list[str]
    means: list[np.ndarray]  # per checkpoint (S, d')
    pool: list[Any]  # per checkpoint: a Datastore
    checkpoints: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    work_dir: str | None = None


def collect_features(
    mixture: Mixture,
    targets: Mapping[str, Any] | Sequence[Source],
    cfg: CADCConfig,
    model: Any = None,
    processing_class: Any = None,
    model_id: str | None = None,
) -> TrajectoryFeatures:
    """Fill (or reuse) ICONS-layout datastores for every warm-up checkpoint and return the subtask means."""
    from . import distributed
    from .callback import model_id_of
    from .icons import _as_targets, _init_distributed, _prepare_model, featurize_checkpoints

    icfg = cfg.icons_config()
    _init_distributed()
    sources = _as_targets(targets, cfg.subtask_column)
    expected = cfg.subtasks or {}
    unknown = [t for t in expected if t not in {s.name for s in sources}]
    if unknown:
        raise ValueError(f"subtasks are listed for unknown targets {unknown}")
    work_dir = cfg.work_dir
    if work_dir is None:
        work_dir = distributed.broadcast(
            tempfile.mkdtemp(prefix="mixwise-cadc-") if distributed.is_main_process() else None
        )
    model_id = model_id or cfg.model_path or model_id_of(model)
    adapters = _prepare_model(icfg, mixture, model, processing_class, model_id, work_dir)
    if adapters.processing_class is None:
        raise ValueError("CADC needs the model's processor or tokenizer (`processing_class`)")
    means, stores, info, names = [], [], [], None
    skipped: list[dict[str, Any]] = []
    for step in featurize_checkpoints(icfg, mixture, sources, adapters, model_id, work_dir, "CADC"):
        info.append(step.info)
        ck_names, ck_means = [], []
        for t, tstore in step.targets:
            feats, norms = tstore.load()
            labels = t.dataset[t.subtask_column] if t.subtask_column else None
            subs, m = subtask_means(feats, norms, labels, t.name, expected.get(t.name))
            ck_names += [f"{t.name}/{s}" for s in subs] if labels is not None else [t.name]
            ck_means.append(m)
        names = ck_names
        means.append(np.concatenate(ck_means))
        if step.index == 0:
            skipped = step.pool.skipped()
        stores.append(step.pool)
    return TrajectoryFeatures(names, means, stores, info, skipped, work_dir)


# ---------------------------------------------------------------------------------------------------------------------
# Result and selector
# ---------------------------------------------------------------------------------------------------------------------


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
        from .transforms import transform_fingerprint

        if len(dataset) != len(self.influence):
            raise ValueError(f"dataset has {len(dataset)} rows but the CADC scores cover {len(self.influence)}")
        digest = hashlib.sha256(np.ascontiguousarray(self.influence).tobytes()).hexdigest()[:16]
        for name, values in self.columns().items():
            if name in dataset.column_names:
                dataset = dataset.remove_columns(name)
            fp = transform_fingerprint(f"cadc:{name}", {"scores": digest, **self.config}, None, dataset._fingerprint)
            dataset = dataset.add_column(name, values.tolist(), new_fingerprint=fp)
        return dataset

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
        if plots:
            paths += plot_result(self, out_dir)
        return paths


def plot_result(result: CADCResult, out_dir: str) -> list[str]:
    """`capability_map.png` (trajectory cosine similarity of the target subtasks, grouped by discovered capability)
    and `stages.png` (rows per curriculum stage, and each capability's self-influence across checkpoints). Uses
    matplotlib's Agg canvas (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    d = result.discovery
    order = np.argsort(d.labels, kind="stable")
    labels = [f"{d.subtasks[i]} ({d.names[d.labels[i]]})" for i in order]
    n = len(order)
    fig = Figure(figsize=(4.5 + 0.45 * n, 3.5 + 0.45 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(d.similarity[np.ix_(order, order)], vmin=-1, vmax=1, cmap="coolwarm")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    bounds = np.flatnonzero(np.diff(d.labels[order])) + 0.5
    for b in bounds:  # lines between capabilities
        ax.axhline(b, color="black", linewidth=1)
        ax.axvline(b, color="black", linewidth=1)
    ax.set_title(f"{d.n_capabilities} capabilities ({d.method})")
    fig.colorbar(im, ax=ax, label="trajectory cosine similarity")
    fig.tight_layout()
    paths = [os.path.join(out_dir, "capability_map.png")]
    fig.savefig(paths[0], dpi=100)

    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
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
    paths.append(os.path.join(out_dir, "stages.png"))
    fig.savefig(paths[1], dpi=100)
    return paths


def analyse(
    subtasks: Sequence[str],
    means: Sequence[np.ndarray],
    pool: Sequence[Any],
    weights: Sequence[float] | None,
    budget: int,
    cfg: CADCConfig,
) -> tuple[Discovery, np.ndarray, np.ndarray, Curation, bool]:
    """Discovery → attribution → curation from per-checkpoint subtask means and pool features (no model)."""
    trajectory = len(means) > 1
    if not trajectory:
        warnings.warn(
            "CADC: only one checkpoint, so there is no trajectory; falling back to single-checkpoint features "
            "(train a warm-up with several checkpoints, e.g. warmup_preset='less', for trajectories)",
            UserWarning,
            stacklevel=2,
        )
    traj = build_trajectories(means, cfg.block_normalize)
    disc = discover_capabilities(
        traj, subtasks, cfg.threshold, cfg.n_capabilities, cfg.resolution, seed=cfg.community_seed
    )
    influence, si = trajectory_influence(pool, capability_means(means, disc.labels), weights)
    bw = cfg.budget_weights
    if isinstance(bw, Mapping):
        missing = [c for c in disc.names if c not in bw]
        if missing:
            raise ValueError(f"budget_weights miss capabilities {missing} (found: {disc.names})")
        bw = [float(bw[c]) for c in disc.names]
    order: Any = cfg.stage_order
    if not isinstance(order, str):
        unknown = [c for c in order if c not in disc.names]
        if unknown:
            raise ValueError(f"stage_order names unknown capabilities {unknown} (found: {disc.names})")
        order = [disc.names.index(c) for c in order]
    cur = curate(influence, si, budget, weights, cfg.budget_split, bw, order)
    return disc, influence, si, cur, trajectory


def run_cadc(
    mixture: Mixture,
    targets: Mapping[str, Any] | Sequence[Source],
    budget: int,
    config: CADCConfig | None = None,
    model: Any = None,
    processing_class: Any = None,
    model_id: str | None = None,
) -> tuple[CADCResult, Plan]:
    """Features → discovery → attribution → curation over `mixture`'s pool; returns the result and the staged plan
    (its `extra` holds [`CADCResult.summary`]; the caller adds the fingerprints)."""
    cfg = config or CADCConfig()
    feats = collect_features(mixture, targets, cfg, model, processing_class, model_id)
    weights = _norm_weights([c["weight"] for c in feats.checkpoints], len(feats.checkpoints)).tolist()
    disc, influence, si, cur, trajectory = analyse(feats.subtasks, feats.means, feats.pool, weights, budget, cfg)
    plan, table = staged_plan(cur, mixture, disc.names, method="cadc")
    result = CADCResult(
        discovery=disc,
        influence=influence,
        self_influence=si,
        weights=weights,
        curation=cur,
        stages=table,
        checkpoints=feats.checkpoints,
        trajectory=trajectory,
        config=cfg.to_dict(),
        skipped=feats.skipped,
        work_dir=feats.work_dir,
    )
    return result, plan


class CADC:
    """The CADC selector (see the module docstring): a staged plan, one stage per discovered capability.

    ```python
    selector = mixwise.cadc.CADC(model_path="path/to/model", work_dir="cadc-work", subtask_column="category")
    subset, plan = mixwise.select_mixture(pool, selector, budget=int(0.05 * n), targets={"mmt": val_ds})
    mixwise.attach(trainer, mixture, selector=CADC(run_warmup=True), targets=targets)  # via the callback
    ```

    The context's budget is the number of selected rows. After `select`, `self.result` holds the [`CADCResult`].
    """

    name = "cadc"

    def __init__(self, config: CADCConfig | None = None, **overrides: Any):
        self.cfg = replace(config, **overrides) if config is not None else CADCConfig(**overrides)
        self.result: CADCResult | None = None

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def select(self, context: SelectionContext) -> Plan:
        if not context.targets:
            raise ValueError("CADC needs targets (validation sets whose subtasks define the capabilities)")
        result, plan = run_cadc(
            context.mixture,
            context.targets,
            context.budget,
            config=self.cfg,
            model=context.model,
            processing_class=context.processing_class,
            model_id=context.model_id,
        )
        self.result = result
        kwargs = _base_kwargs(self, context)
        kwargs["fingerprints"] = {**kwargs["fingerprints"], "adapters": [c["adapter"] for c in result.checkpoints]}
        kwargs["extra"] = result.summary()
        return Plan.staged(plan.stages, **kwargs)

    def add_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        if self.result is None:
            raise RuntimeError("call select() first")
        return self.result.add_columns(dataset)


__all__ = [
    "CADC",
    "CADCConfig",
    "CADCResult",
    "Curation",
    "Discovery",
    "analyse",
    "assign",
    "build_trajectories",
    "capability_means",
    "collect_features",
    "curate",
    "discover_capabilities",
    "plot_result",
    "run_cadc",
    "split_budget",
    "staged_plan",
    "subtask_means",
    "trajectory_influence",
    "trajectory_similarity",
]
