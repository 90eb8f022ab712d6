"""Influence scores (LESS / ICONS step 4): per-task mean validation features, streamed against a pool datastore.

**Influence.** With unit pool features `g̃(z)` and unit validation features `g̃'_j` (cosine similarity, LESS),
the influence of pool sample `z` on task `k` is `I_k(z) = (1/|V_k|) Σ_{j∈V_k} ⟨g̃(z), g̃'_j⟩`. Because the mean of
inner products is the inner product with the mean, this is `⟨g̃(z), μ_k⟩` with `μ_k` the mean unit validation
feature: one `(N × d') · (d' × K)` product, streamed from the datastore block by block — the `N × |V|` matrix is
never formed. With several warm-up checkpoints (LESS), `I_k = Σ_c w_c I_k^{(c)}` with `w_c` the checkpoint's mean
learning rate, normalised to `Σ w_c = 1`. A task with subtasks (e.g. a 13-category benchmark, as in ICONS) is
scored per subtask, then `I_k = max over subtasks`.

The aggregation of the `N × K` matrix into one selection is ICONS's ([`mixwise.icons.aggregation`]).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# ---------------------------------------------------------------------------------------------------------------------
# Influence
# ---------------------------------------------------------------------------------------------------------------------


def task_means(
    features: np.ndarray,
    norms: np.ndarray | None = None,
    subtasks: Sequence[Any] | None = None,
    name: str = "target",
) -> tuple[list[str], np.ndarray]:
    """Mean unit validation feature per subtask: `(subtask names, means (S, d') float32)`.

    Rows with a NaN norm (skipped while featurizing) are left out. `subtasks[j]` is row `j`'s subtask (`None`: one
    column named after the target). Raises naming the target (and subtask) when no usable row is left.
    """
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise ValueError(f"target '{name}' has no rows: cannot compute its influence (validation set is empty)")
    valid = np.ones(len(feats), bool) if norms is None else np.isfinite(np.asarray(norms))
    if not valid.any():
        raise ValueError(f"target '{name}': every validation row was skipped; no feature to compute influence with")
    if subtasks is None:
        return [name], feats[valid].mean(axis=0, keepdims=True)
    labels = np.asarray([str(s) for s in subtasks])
    if len(labels) != len(feats):
        raise ValueError(f"target '{name}': {len(labels)} subtask labels for {len(feats)} rows")
    names = sorted(set(labels.tolist()))
    means = []
    for s in names:
        rows = (labels == s) & valid
        if not rows.any():
            raise ValueError(f"target '{name}', subtask '{s}': every validation row was skipped")
        means.append(feats[rows].mean(axis=0))
    return names, np.stack(means).astype(np.float32)


def stream_scores(
    pool: Any, means: np.ndarray, block_rows: int | None = None, return_norms: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """`⟨g̃(z), μ_s⟩` for every row of a pool and every column `s` of `means` (S, d'); skipped rows get NaN.

    `pool` is a datastore, streamed in blocks (memory: one float16 block + its float32 copy + the `N × S` result), or
    a `(unit features (N, d'), norms (N,))` pair of arrays. With `return_norms`, also the squared feature norms
    `‖g_z‖²` (float64; NaN for skipped rows), i.e. each row's self-influence. `block_rows` defaults to a 64 MiB
    float32 block, at most 16,384 rows (d' = 8192, LESS's: 2,048 rows, not 768 MiB of buffers).
    """
    if block_rows is None:
        block_rows = min(16384, max(256, (64 << 20) // (4 * max(int(np.shape(means)[-1]), 1))))
    means = np.ascontiguousarray(means, dtype=np.float32)
    if isinstance(pool, tuple):
        feats, norms = pool
        n_rows, dim = np.shape(feats)
        blocks: Any = [(0, n_rows, np.asarray(feats), np.asarray(norms))]
        block_rows = max(n_rows, 1)
    else:
        n_rows, dim = pool.n_rows, pool.dim
        blocks = pool.iter_blocks(block_rows)
    if means.ndim != 2 or means.shape[1] != dim:
        raise ValueError(f"means have shape {means.shape}, but the pool's features have dim {dim}")
    out = np.empty((n_rows, means.shape[0]), np.float32)
    all_norms = np.empty(n_rows, np.float64) if return_norms else None
    block = np.empty((min(block_rows, n_rows), dim), np.float32)
    for start, stop, feats, norms in blocks:
        x = block[: stop - start]
        np.copyto(x, feats, casting="unsafe")
        np.matmul(x, means.T, out=out[start:stop])
        out[start:stop][~np.isfinite(norms)] = np.nan
        if all_norms is not None:
            all_norms[start:stop] = norms
    if all_norms is None:
        return out
    return out, all_norms**2


@dataclass
class InfluenceScores:
    """`scores[z, k]` = influence of pool row `z` on task `k` (NaN: the row was skipped)."""

    tasks: list[str]
    scores: np.ndarray
    subtasks: dict[str, list[str]] = field(default_factory=dict)
    checkpoint_weights: list[float] = field(default_factory=list)

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.scores).all(axis=1)

    def save(self, path: str) -> str:
        np.savez(path, scores=self.scores, tasks=np.array(self.tasks))
        meta = {"tasks": self.tasks, "subtasks": self.subtasks, "checkpoint_weights": self.checkpoint_weights}
        with open(os.path.splitext(path)[0] + ".json", "w") as f:
            json.dump(meta, f, indent=1)
        return path


def combine_influence(
    per_checkpoint: Sequence[Mapping[str, np.ndarray]],
    weights: Sequence[float] | None = None,
    subtask_columns: Mapping[str, Sequence[str]] | None = None,
) -> InfluenceScores:
    """Weighted sum over checkpoints, then max over each task's subtask columns.

    Args:
        per_checkpoint: per checkpoint, `{task: (N, S_task) scores}` (one column per subtask).
        weights: checkpoint weights (LESS: mean learning rate); normalised to sum to 1; default equal.
        subtask_columns: `{task: subtask names}` for the record.
    """
    if not per_checkpoint:
        raise ValueError("no checkpoint scores to combine")
    w = np.ones(len(per_checkpoint)) if weights is None else np.asarray(weights, dtype=np.float64)
    if len(w) != len(per_checkpoint) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"checkpoint weights must be {len(per_checkpoint)} non-negative numbers, got {weights}")
    w = w / w.sum()
    tasks = list(per_checkpoint[0])
    n_rows = len(per_checkpoint[0][tasks[0]]) if tasks else 0
    combined = np.empty((n_rows, len(tasks)), np.float32)
    for k, task in enumerate(tasks):  # one task's float64 sum at a time
        total = sum(wc * np.asarray(scores[task], dtype=np.float64) for wc, scores in zip(w, per_checkpoint))
        combined[:, k] = total.max(axis=1)
    return InfluenceScores(
        tasks=tasks,
        scores=combined,
        subtasks={t: list(s) for t, s in (subtask_columns or {}).items()},
        checkpoint_weights=w.tolist(),
    )


__all__ = ["InfluenceScores", "combine_influence", "stream_scores", "task_means"]
