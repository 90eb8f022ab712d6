"""ICONS's aggregation (step 5, Table 3): an `N × K` influence matrix → one selection of `M` rows.

**Aggregation** of the `N × K` matrix into `M` selected rows ([`aggregate`]); rows whose features were skipped
(NaN scores) are never selected:

* `vote` (ICONS, the default): `τ_k` = the `(100 − 100·p_vote)`-th percentile of `I_k` over the pool (numpy's
  default linear interpolation); `z` gets a vote from `k` if `I_k(z) ≥ τ_k`; the `M` rows with the most votes are
  selected. `p_vote` (the share of the pool each task votes for) and `M` (`p_select · N`) are separate; ICONS uses
  20% for both. **Tie-break** (votes are small integers, so ties are massive): more votes first, then the higher
  *mean within-task percentile rank* (rank of `I_k(z)` among the pool, ties averaged, divided by `N`, averaged over
  tasks — compared exactly, as integer sums of doubled average ranks), then the lower row id.
* `merge`: `Σ_k I_k`. `max`: `max_k I_k` (LESS). `gausnorm`: `Σ_k (I_k − μ_k)/σ_k` (population std; a constant task
  contributes 0). `sumnorm`: `Σ_k I_k / Σ_z I_k(z)` — ill-conditioned when a task's sum is near zero, and it flips
  the task's ranking when the sum is negative; refused unless `Σ_z I_k(z) > guard · Σ_z |I_k(z)|` for every task.
  Ties by row id.
* `round_robin`: cycle through the tasks in order; each adds its best not-yet-selected row (ties: row id).
* `min_rank`: order rows by their best rank over tasks (0 = the task's top row; ranks break score ties by row id),
  then by the sum of their ranks, then by row id.
* `specialist`: the top `M` of one task (LESS's selection).

**mixwise's fixes** (options of [`aggregate`]; `ICONSConfig(preset="paper")` switches them off):

* *duplicates counted once* (`groups`: a duplicate-group id per row, e.g. rows whose gradient features have cosine
  >= 0.999, [`mixwise.signals.duplicates.duplicate_groups`]): only the first row of each group (lowest row id) takes
  part — in the vote thresholds as in the selection — and the other copies are selected only when the budget
  exceeds the distinct rows (then in the aggregator's order). The paper's vote selected a row and its copies
  wholesale (on the toy world: 20 copies of one row; a specialist spent 160 rows on 8 distinct rows).
* *coverage floor* (`coverage_floor`, vote only, K >= 2 tasks): first every task in turn adds its best not yet selected
  row until each has added `floor(coverage_floor · M / K)`, then the vote fills the rest. With `p_vote = p_select`
  and disjoint tasks the plain vote keeps only rows two tasks want and starves an isolated task (measured: 5 and 2
  of 280 rows); the floor keeps every task covered. `coverage_floor = 1` is the round robin, `0` the plain vote.
* *answer subtasks* (`ICONSConfig.answer_subtasks`, in [`mixwise.icons.run_icons`]): a target whose answers come
  from a small closed set gets one mean validation gradient per answer, max-merged like ICONS's own subtasks. With
  one mean gradient per target, the top rows of a family missed whole answer classes (toy world: no "up" arrow
  among 97 spatial rows, no "2" among 76 count rows) and the fine-tuned model never learned them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata

AGGREGATORS = ("vote", "merge", "max", "gausnorm", "sumnorm", "round_robin", "min_rank", "specialist")

__all__ = [
    "AGGREGATORS",
    "Selection",
    "aggregate",
    "doubled_rank_sum",
    "top_set_overlap",
    "vote_counts",
    "vote_histogram",
]


@dataclass
class Selection:
    """The outcome of an aggregator: `order` = selected rows in priority order (best first)."""

    method: str
    order: np.ndarray
    votes: np.ndarray | None = None
    thresholds: list[float] | None = None
    aggregate: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rows(self) -> np.ndarray:
        return np.sort(self.order)


def _check(scores: np.ndarray, n_select: int) -> tuple[np.ndarray, np.ndarray]:
    """`(scores, valid rows)`; float32 scores stay float32 (no N × K float64 copy of a million-row pool's scores)."""
    scores = np.asarray(scores)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"scores must be an (N, K) matrix with K >= 1, got shape {scores.shape}")
    valid = np.isfinite(scores).all(axis=1)
    n_valid = int(valid.sum())
    if isinstance(n_select, bool) or not isinstance(n_select, int | np.integer) or n_select <= 0:
        raise ValueError(f"the number of rows to select must be a positive integer, got {n_select!r}")
    if n_select > n_valid:
        raise ValueError(f"cannot select {n_select} rows: the pool has {n_valid} rows with scores")
    return scores, valid


def _top(key: np.ndarray, valid: np.ndarray, n_select: int) -> np.ndarray:
    """Rows with the highest `key` (ties: lower row id), among valid rows."""
    return _ranked(key, np.nonzero(valid)[0], n_select)


def _ranked(key: np.ndarray, rows: np.ndarray, n_top: int) -> np.ndarray:
    """The first `n_top` of `rows` (ascending ids) ordered by descending `key[row]`, ties by row id. Only the rows
    whose key reaches the `n_top`-th largest are sorted (all of them when scores tie there), not the whole pool."""
    values = key[rows]
    if n_top < len(rows) // 2 and not np.isnan(values).any():  # (NaN keys: the lexsort's order, NaN last)
        cut = np.partition(values, len(values) - n_top)[len(values) - n_top]
        head = values >= cut
        rows, values = rows[head], values[head]
    return rows[np.lexsort((rows, -values))][:n_top]


def vote_counts(scores: np.ndarray, p_vote: float) -> tuple[np.ndarray, list[float]]:
    """`(votes per row, thresholds τ_k)`: a vote from task `k` when `I_k(z) ≥ τ_k`, the `(100 − 100·p_vote)`-th
    percentile of `I_k` over the valid rows (invalid rows get no vote)."""
    if not 0 < p_vote <= 1:
        raise ValueError(f"p_vote must be in (0, 1], got {p_vote}")
    scores = np.asarray(scores)
    valid = np.isfinite(scores).all(axis=1)
    taus: list[float] = []
    votes = np.zeros(len(scores), np.int64)
    for k in range(scores.shape[1]):  # one float64 column at a time (the thresholds are float64 percentiles)
        column = scores[:, k].astype(np.float64)
        tau = float(np.percentile(column[valid], 100.0 * (1.0 - p_vote)))
        taus.append(tau)
        votes += valid & (column >= tau)  # a NaN compares False
    return votes, taus


def doubled_rank_sum(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Σ_k 2·(average rank of I_k(z) among valid rows, ascending, 1-based): the exact integer form of the mean
    within-task percentile rank (invalid rows: -1)."""
    out = np.full(len(scores), -1, np.int64)
    total = np.zeros(int(valid.sum()), np.int64)
    for k in range(scores.shape[1]):
        total += np.rint(2 * rankdata(scores[valid, k], method="average")).astype(np.int64)
    out[valid] = total
    return out


def aggregate(
    scores: np.ndarray,
    n_select: int,
    method: str = "vote",
    p_vote: float | None = None,
    task: int | str | None = None,
    tasks: Sequence[str] | None = None,
    sumnorm_guard: float = 1e-3,
    groups: np.ndarray | None = None,
    coverage_floor: float = 0.0,
) -> Selection:
    """Select `n_select` rows from an `(N, K)` influence matrix with one of [`AGGREGATORS`] (see module docstring).

    Args:
        scores: `I_k(z)`; rows with a NaN are never selected.
        n_select: `M`, the number of rows to select (`p_select · N`).
        method: the aggregator.
        p_vote: `vote` only: the share of the pool each task votes for (default: `n_select / N`, i.e. ICONS's
            `p_vote = p_select`).
        task: `specialist` only: the task (index or name in `tasks`).
        sumnorm_guard: `sumnorm` only: refuse when a task's `Σ_z I_k(z) ≤ guard · Σ_z |I_k(z)|`.
        groups: a duplicate-group id per row: duplicates count once (see the module docstring). None: the paper.
        coverage_floor: `vote` only: the share of `M` reserved for a round robin over the tasks (0: the paper).
    """
    if method not in AGGREGATORS:
        raise ValueError(f"unknown aggregator {method!r}; expected one of {AGGREGATORS}")
    if not 0.0 <= coverage_floor <= 1.0:
        raise ValueError(f"coverage_floor must be in [0, 1], got {coverage_floor}")
    if groups is not None:
        return _dedup(scores, n_select, groups, method, p_vote, task, tasks, sumnorm_guard, coverage_floor)
    scores, valid = _check(scores, n_select)
    n, k_tasks = scores.shape
    names = list(tasks) if tasks is not None else [str(k) for k in range(k_tasks)]
    if method == "vote":
        p = n_select / int(valid.sum()) if p_vote is None else float(p_vote)
        votes, taus = vote_counts(scores, p)
        ranks2 = doubled_rank_sum(scores, valid)
        idx = np.nonzero(valid)[0]
        order = idx[np.lexsort((idx, -ranks2[idx], -votes[idx]))]
        info: dict[str, Any] = {"p_vote": p, "rank_sum2": ranks2}
        quota = int(coverage_floor * n_select // k_tasks) if k_tasks > 1 else 0
        if quota > 0:
            covered = _round_robin(scores, valid, quota * k_tasks)
            taken = np.zeros(n, bool)
            taken[covered] = True
            order = np.concatenate([covered, order[~taken[order]]])
            info["coverage"] = {"floor": coverage_floor, "per_task": quota}
        return Selection(method, order[:n_select], votes=votes, thresholds=taus, info=info)
    if method not in ("vote", "round_robin"):  # arithmetic on the scores: in float64, as published
        scores = scores.astype(np.float64, copy=False)
    if method == "specialist":
        if task is None:
            if k_tasks != 1:
                raise ValueError(f"specialist selection needs `task` (one of {names})")
            task = 0
        k = names.index(task) if isinstance(task, str) else int(task)
        if not 0 <= k < k_tasks:
            raise ValueError(f"task {task!r} out of range for {k_tasks} tasks")
        return Selection(method, _top(scores[:, k], valid, n_select), aggregate=scores[:, k], info={"task": names[k]})
    if method == "merge":
        key = scores.sum(axis=1)
    elif method == "max":
        key = scores.max(axis=1)
    elif method == "gausnorm":
        mu = scores[valid].mean(axis=0)
        sigma = scores[valid].std(axis=0)
        safe = np.where(sigma > 0, sigma, 1.0)
        key = np.where(sigma > 0, (scores - mu) / safe, 0.0).sum(axis=1)
    elif method == "sumnorm":
        sums = scores[valid].sum(axis=0)
        mass = np.abs(scores[valid]).sum(axis=0)
        for k in range(k_tasks):
            if not sums[k] > sumnorm_guard * mass[k]:
                raise ValueError(
                    f"sumnorm: the influence of task '{names[k]}' sums to {sums[k]:.4g} over the pool "
                    f"(|sum| / Σ|I| = {abs(sums[k]) / max(mass[k], 1e-300):.3g} ≤ guard {sumnorm_guard}, or negative): "
                    "dividing by it is ill-conditioned or flips the task's ranking; use gausnorm or vote"
                )
        key = (scores / sums).sum(axis=1)
    elif method == "round_robin":
        return Selection(method, _round_robin(scores, valid, n_select))
    else:  # min_rank
        ranks = np.empty((n, k_tasks), np.int64)
        idx = np.nonzero(valid)[0]
        for k in range(k_tasks):
            order = idx[np.lexsort((idx, -scores[idx, k]))]
            ranks[order, k] = np.arange(len(order))
        best, total = ranks.min(axis=1), ranks.sum(axis=1)
        order = idx[np.lexsort((idx, total[idx], best[idx]))][:n_select]
        return Selection(method, order, aggregate=best.astype(np.float64))
    key = np.where(valid, key, -np.inf)
    return Selection(method, _top(key, valid, n_select), aggregate=key)


def _dedup(scores, n_select, groups, method, p_vote, task, tasks, sumnorm_guard, coverage_floor) -> Selection:
    """`aggregate` with duplicates counted once: first among the first row of every group, then (budget larger than
    the distinct rows) among the other copies."""
    scores, _ = _check(scores, n_select)
    groups = np.asarray(groups)
    if groups.shape != (len(scores),):
        raise ValueError(f"groups must have one id per row ({len(scores)}), got shape {groups.shape}")
    first = np.zeros(len(scores), bool)
    _, reps = np.unique(groups, return_index=True)
    first[reps] = True
    valid = np.isfinite(scores).all(axis=1)
    n_first = int((valid & first).sum())
    head = np.where(first[:, None], scores, np.nan)
    kw = dict(p_vote=p_vote, task=task, tasks=tasks, sumnorm_guard=sumnorm_guard, coverage_floor=coverage_floor)
    sel = aggregate(head, min(n_select, n_first), method, **kw)
    order = sel.order
    if n_select > n_first:  # the budget forces repeats: the other copies, in the aggregator's order
        rest = aggregate(np.where(first[:, None], np.nan, scores), n_select - n_first, method, **kw)
        order = np.concatenate([order, rest.order])
    sel.order = order
    sel.info["dedup"] = {"distinct_rows": n_first, "rows": int(valid.sum())}
    return sel


def _round_robin(scores: np.ndarray, valid: np.ndarray, n_select: int) -> np.ndarray:
    idx = np.nonzero(valid)[0]
    # a task's pointer passes at most n_select rows (each step takes one row), so its top n_select rows suffice
    orders = [_ranked(scores[:, k], idx, n_select) for k in range(scores.shape[1])]
    taken = np.zeros(len(scores), bool)
    pointers = [0] * len(orders)
    out: list[int] = []
    while len(out) < n_select:
        for k, order in enumerate(orders):
            if len(out) == n_select:
                break
            p = pointers[k]
            while taken[order[p]]:
                p += 1
            taken[order[p]] = True
            out.append(int(order[p]))
            pointers[k] = p + 1
    return np.asarray(out, dtype=np.int64)


def top_set_overlap(scores: np.ndarray, n_top: int) -> np.ndarray:
    """`overlap[k, l] = |top_k ∩ top_l| / n_top` for the per-task top-`n_top` sets (ICONS Fig. 3)."""
    scores, valid = _check(scores, n_top)
    sets = []
    for k in range(scores.shape[1]):
        top = np.zeros(len(scores), bool)
        top[_top(scores[:, k], valid, n_top)] = True
        sets.append(top)
    k_tasks = len(sets)
    out = np.empty((k_tasks, k_tasks))
    for a in range(k_tasks):
        for b in range(k_tasks):
            out[a, b] = (sets[a] & sets[b]).sum() / n_top
    return out


def vote_histogram(votes: np.ndarray, n_tasks: int, selected: np.ndarray | None = None) -> dict[str, list[int]]:
    """Number of rows with 0..K votes (all rows, and the selected ones)."""
    hist = {"all": np.bincount(votes, minlength=n_tasks + 1).tolist()}
    if selected is not None:
        hist["selected"] = np.bincount(votes[selected], minlength=n_tasks + 1).tolist()
    return hist
