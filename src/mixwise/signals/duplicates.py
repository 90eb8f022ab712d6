"""Near-duplicate groups of feature vectors, streamed, in time and memory linear in the rows.

**Groups.** Row `i` joins the group of the first earlier *representative* `r` (the lowest row id) whose unit vector
has cosine `⟨u_i, u_r⟩ >= threshold` with its own, else it starts a new group; group ids are 0, 1, ... in order of
first appearance, so a group's first row is its representative. All-zero rows (e.g. rows skipped while featurizing)
form one group. `threshold >= 1` groups only bitwise-identical rows (a hash of each row's bytes).

**Candidates** (threshold < 1). Comparing every row with every representative is `O(n · distinct · d)`: at a
million distinct rows, 10^15 multiply-adds. Instead, each row is compared only with the representatives that share a
bucket of a p-stable locality-sensitive hash (E2LSH; Datar, Immorlica, Indyk & Mirrokni, *Locality-Sensitive Hashing
Scheme Based on p-Stable Distributions*, SoCG 2004): `L` tables, each the concatenation of `k` functions
`h(u) = ⌊(a·u + b) / w⌋` with `a ~ N(0, I)`, `b ~ U[0, w)` (seeded: the same rows give the same groups on every
run and rank). Unit vectors at cosine `>= threshold` are within distance `r = √(2(1 − threshold))`; with
`w = 16 r`, `k = 14`, `L = 20` such a pair shares at least one bucket unless with probability below 2·10⁻⁶ (pairs
closer than `r / 2`, e.g. one row featurized in two batches, below 10⁻¹⁰), while two rows at cosine 0.15 (distance
1.3, typical of distinct rows' gradient features) share one with probability 4·10⁻¹⁰ per table. The hash is tuned
for thresholds near 1 (the default 0.999): a lower threshold widens the buckets, so more rows are compared and more
representatives are held.

Memory: the `L` 32-bit bucket keys of every row (80 bytes per row, freed before the comparison pass) and, for the
rows that share a bucket with another row, their bucket in each table and the representatives' linked lists (240
bytes per such row); no vector is held beyond a block: the rows are read block by block (from an array or a
[`mixwise.signals.datastore.Datastore`]) in two passes, and a representative that a later row is compared with is
read again (one `pread` from a store).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .embeddings import l2_normalize

__all__ = ["LSH_FUNCTIONS", "LSH_TABLES", "LSH_WIDTH", "duplicate_groups"]

LSH_TABLES = 20  # L
LSH_FUNCTIONS = 14  # k, concatenated per table
LSH_WIDTH = 16.0  # w / r


def _blocks(vectors: Any, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
    """`(start, rows)` blocks of an `(n, d)` array (its own dtype), or of a datastore (float32; skipped rows, whose
    norm is not finite, as zero rows)."""
    if hasattr(vectors, "iter_blocks"):
        for start, _, feats, norms in vectors.iter_blocks(block_rows):
            x = np.asarray(feats, dtype=np.float32)
            x[~np.isfinite(norms)] = 0.0
            yield start, x
        return
    for start in range(0, len(vectors), block_rows):
        yield start, np.asarray(vectors[start : start + block_rows])


def _row(vectors: Any, block: np.ndarray, start: int, r: int) -> np.ndarray:
    """Row `r`: from the block in hand when it is there, else read again (a store: one `pread`)."""
    if start <= r < start + len(block):
        return block[r - start]
    if hasattr(vectors, "iter_blocks"):
        return vectors.read(r, r + 1)[0][0]  # a representative: never a skipped row
    return np.asarray(vectors[r])


def _shape(vectors: Any) -> tuple[int, int]:
    if hasattr(vectors, "iter_blocks"):
        return int(vectors.n_rows), int(vectors.dim)
    shape = np.shape(vectors)
    if len(shape) != 2:
        raise ValueError(f"expected an (n, d) matrix, got shape {shape}")
    return int(shape[0]), int(shape[1])


def duplicate_groups(
    vectors: Any, threshold: float = 0.999, block_rows: int | None = None, seed: int = 0
) -> np.ndarray:
    """A duplicate-group id per row (see the module docstring): `vectors` is an `(n, d)` array or a datastore.

    Args:
        vectors: the rows' vectors (any scale: compared by cosine), or a datastore streamed block by block.
        threshold: cosine at or above which a row joins an earlier representative's group; `>= 1`: bitwise equal.
        block_rows: rows read and hashed at once (default: a 16 MiB float32 block, at most 4,096 rows).
        seed: the hash's random projections.
    """
    n, dim = _shape(vectors)
    if block_rows is None:
        block_rows = min(4096, max(256, (16 << 20) // (4 * max(dim, 1))))
    groups = np.empty(n, dtype=np.int64)
    if threshold >= 1.0:
        seen: dict[bytes, int] = {}
        for start, x in _blocks(vectors, block_rows):
            for j in range(len(x)):
                groups[start + j] = seen.setdefault(x[j].tobytes(), len(seen))
        return groups
    if n == 0:
        return groups
    width = LSH_WIDTH * float(np.sqrt(2.0 * (1.0 - threshold)))
    rng = np.random.default_rng([seed, dim])
    proj = rng.standard_normal((dim, LSH_TABLES * LSH_FUNCTIONS)).astype(np.float32)
    shift = rng.uniform(0.0, width, LSH_TABLES * LSH_FUNCTIONS).astype(np.float32)
    mult = rng.integers(1, 2**62, LSH_FUNCTIONS, dtype=np.uint64) * np.uint64(2) + np.uint64(1)  # odd multipliers

    # pass 1: bucket keys of every row; zero rows are kept out of the buckets
    keys = np.empty((n, LSH_TABLES), dtype=np.uint32)
    zero = np.zeros(n, dtype=bool)
    for start, x in _blocks(vectors, block_rows):
        x = x.astype(np.float32, copy=False)
        norm = np.linalg.norm(x, axis=1)
        zero[start : start + len(x)] = norm == 0
        u = x / np.maximum(norm, 1e-12)[:, None]
        h = np.floor((u @ proj + shift) / width).astype(np.int64).view(np.uint64)
        h = h.reshape(len(x), LSH_TABLES, LSH_FUNCTIONS)
        key = (h * mult).sum(axis=2, dtype=np.uint64)  # wraps modulo 2^64: a hash of the k bucket numbers
        keys[start : start + len(x)] = (key ^ (key >> np.uint64(32))).astype(np.uint32)
    # rows that share a bucket with another row in some table; every other row is its own representative
    shared = np.zeros(n, dtype=bool)
    for t in range(LSH_TABLES):
        column = keys[:, t]
        ordered = np.sort(column[~zero])
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        shared |= np.isin(column, repeated) & ~zero
    cand = np.nonzero(shared)[0]  # ascending row ids
    m = len(cand)
    # per table, a bucket id per candidate (the bucket's first place in the candidates sorted by key)
    bucket = np.empty((LSH_TABLES, m), dtype=np.int32)
    for t in range(LSH_TABLES):
        key = keys[cand, t]
        o = np.argsort(key, kind="stable")
        ks = key[o]
        starts = np.flatnonzero(np.r_[True, ks[1:] != ks[:-1]])
        bucket[t, o] = np.repeat(starts, np.diff(np.r_[starts, m])).astype(np.int32)
    del keys

    # pass 2: in row order, each candidate is compared with the representatives already in its buckets, kept as one
    # linked list per bucket (`last`: a bucket's latest representative; `link`: the one before it), so a bucket of a
    # thousand copies of one row costs one comparison per copy, not a scan of the bucket
    rep_of = np.arange(n, dtype=np.int64)  # the representative of each row (itself unless merged)
    if zero.any():
        rep_of[zero] = int(np.argmax(zero))
    last = np.full((LSH_TABLES, m), -1, dtype=np.int32)
    link = np.full((LSH_TABLES, m), -1, dtype=np.int32)
    tables = np.arange(LSH_TABLES)
    done = 0  # candidates handled so far
    for start, x in _blocks(vectors, block_rows):
        hi = int(np.searchsorted(cand, start + len(x)))
        for c in range(done, hi):
            buckets = bucket[:, c]
            heads = last[tables, buckets]
            found: set[int] = set()
            for t in np.flatnonzero(heads >= 0):
                r = int(heads[t])
                while r >= 0:
                    found.add(r)
                    r = int(link[t, r])
            i = int(cand[c])
            if found:
                u = l2_normalize(x[i - start])
                rows = cand[sorted(found)]  # earlier representatives sharing a bucket, in row order
                sims = np.array([l2_normalize(_row(vectors, x, start, int(r))) @ u for r in rows])
                hit = np.flatnonzero(sims >= threshold)
                if len(hit):
                    rep_of[i] = rows[hit[0]]
                    continue
            link[:, c] = heads  # a new representative: first in each of its buckets' lists
            last[tables, buckets] = c
        done = hi
    # group ids in order of first appearance: a representative's rank among the representatives
    is_rep = rep_of == np.arange(n)
    groups[is_rep] = np.arange(int(is_rep.sum()))
    groups[~is_rep] = groups[rep_of[~is_rep]]
    return groups
