"""Source diversity: k-means silhouette plus normalized cluster entropy (scikit-learn).

DataProphet (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1), for a source s:

* per sample u, `z_u = normalize(mean of u's field unit vectors)` (Q, A and I) — [`sample_vectors`];
* k-means with K clusters (default 10) on the z's;
* `Sil(s)` = mean silhouette coefficient (Euclidean) — `sklearn.metrics.silhouette_score`;
* `H(s) = −(1/log K) Σ_k π_k log π_k`, π_k the share of samples in cluster k (0·log 0 = 0), in [0, 1];
* diversity = `Sil(s) + H(s)`.

The silhouette needs at least 2 distinct clusters: when k-means finds a single one (all samples identical),
`Sil = 0` by convention. A source needs more than K rows to be clustered into K clusters.

**Duplicates** (`dedup=True`, mixwise's default in DataProphet; off in the paper). Exact copies make k-means find tight
clusters of identical points, so the paper's formula gives a source of a few distinct rows, each repeated, the best
silhouette in the pool (1.0) — measured on the toy world: 10 distinct rows x 20 copies scored 1.986, above every real
family. Duplicate-aware diversity counts each distinct sample once: rows whose z vectors have cosine >= `threshold`
are one sample ([`duplicate_groups`]; or the rows given as duplicates, e.g. exact duplicate rows by
[`content_hashes`], which DataProphet uses: the base model's mean-pooled embeddings of *different* rows of one
family often have cosine above 0.999, so a vector threshold would merge distinct rows); k-means (K' = min(K, distinct − 1) clusters) and the silhouette run on the
distinct vectors, the entropy is still normalized by log K, and the sum is scaled by the distinct share::

    D(s) = (Sil(distinct z) + H(distinct z)) · n_distinct / n

(so a source with no duplicates gets exactly the paper's value, and 10 distinct rows x 20 copies gets at most 1/20 of
it). [`content_hashes`] finds exact duplicate *rows* of a dataset without a model (image bytes and text).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .duplicates import duplicate_groups
from .embeddings import l2_normalize

__all__ = [
    "DiversityResult",
    "cluster_entropy",
    "content_hashes",
    "distinct_first_order",
    "diversity",
    "duplicate_groups",
    "sample_vectors",
]


@dataclass
class DiversityResult:
    """Silhouette, normalized entropy, their sum, and the clustering behind them."""

    silhouette: float
    entropy: float
    labels: np.ndarray
    proportions: np.ndarray
    n_clusters: int
    distinct: float = 1.0  # share of distinct samples (1.0 unless computed with dedup=True)

    @property
    def value(self) -> float:
        """`(Sil + H) · distinct`, DataProphet's diversity term (`distinct` = 1 without dedup: the paper's
        `Sil + H`)."""
        return (self.silhouette + self.entropy) * self.distinct


def sample_vectors(fields: Sequence[np.ndarray | None]) -> np.ndarray:
    """Per-sample `z = normalize(mean_f unit(x_f))` over the given field matrices (each `(n, d)`; `None` skipped).

    When the fields live in spaces of different widths (e.g. an external text encoder next to the vision
    pathway), the unit vectors are concatenated instead of averaged (then normalized): the same geometry without
    the cross-field dot products.
    """
    mats = [l2_normalize(np.asarray(f, dtype=np.float64)) for f in fields if f is not None]
    if not mats:
        raise ValueError("no field embeddings to combine")
    n = {len(m) for m in mats}
    if len(n) != 1:
        raise ValueError(f"field embeddings have different numbers of rows: {sorted(n)}")
    widths = {m.shape[1] for m in mats}
    z = np.mean(mats, axis=0) if len(widths) == 1 else np.concatenate(mats, axis=1)
    return l2_normalize(z)


def cluster_entropy(labels: np.ndarray, n_clusters: int) -> tuple[float, np.ndarray]:
    """`(H, π)`: `H = −(1/log K) Σ_k π_k log π_k` over K clusters (empty ones contribute 0)."""
    if n_clusters < 2:
        raise ValueError(f"entropy normalized by log K needs K >= 2, got {n_clusters}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_clusters).astype(np.float64)
    pi = counts / counts.sum()
    nz = pi[pi > 0]
    return float(-(nz * np.log(nz)).sum() / np.log(n_clusters)), pi


def distinct_first_order(order: Sequence[int], groups: np.ndarray) -> np.ndarray:
    """`order` (row ids, best first) re-ordered so that every duplicate group's first row comes before any second
    copy: the first copies in their original order, then the second copies, and so on. Taking a prefix of the result
    selects no row twice unless the prefix is longer than the number of distinct groups."""
    order = np.asarray(order, dtype=np.int64)
    rank = np.zeros(len(order), dtype=np.int64)
    seen: dict[int, int] = {}
    for k, row in enumerate(order):
        g = int(groups[row])
        rank[k] = seen.get(g, 0)
        seen[g] = rank[k] + 1
    return order[np.lexsort((np.arange(len(order)), rank))]


def content_hashes(dataset: Any) -> list[str]:
    """A sha256 per row of a `datasets.Dataset` over its stored images (raw bytes, not decoded) and every other
    column except `id` and `source`: rows with equal hashes are exact duplicates."""
    import hashlib
    import json

    table = dataset.with_format("arrow")[0 : len(dataset)]
    columns = [c for c in table.column_names if c not in ("id", "source")]
    data = {c: table.column(c).to_pylist() for c in columns}
    out = []
    for i in range(len(dataset)):
        h = hashlib.sha256()
        for c in columns:
            value = data[c][i]
            if c in ("images", "image"):
                items = value if isinstance(value, list) else [value]
                for im in items:
                    h.update((im or {}).get("bytes") or b"" if isinstance(im, dict) else repr(im).encode())
            else:
                h.update(json.dumps(value, sort_keys=True, default=str).encode())
            h.update(b"\x00")
        out.append(h.hexdigest())
    return out


def diversity(
    z: np.ndarray,
    n_clusters: int = 10,
    seed: int = 0,
    n_init: int = 10,
    name: str = "?",
    dedup: bool = False,
    threshold: float = 0.999,
    groups: np.ndarray | None = None,
) -> DiversityResult:
    """k-means (K = `n_clusters`, seeded) on `z`, then mean Euclidean silhouette and normalized entropy; with `dedup`,
    on the distinct vectors only, scaled by the distinct share (see the module docstring). Duplicates are the rows
    sharing an id in `groups` when given (e.g. exact duplicates by [`content_hashes`]), else rows whose z vectors
    have cosine >= `threshold`.

    Raises:
        ValueError: naming the dataset when it has no more rows than clusters.
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"dataset '{name}': expected (n, d) sample vectors, got shape {z.shape}")
    if len(z) <= n_clusters:
        raise ValueError(
            f"dataset '{name}': diversity with K={n_clusters} clusters needs more than {n_clusters} rows, got "
            f"{len(z)} (raise the subsample size, lower n_clusters, or turn the diversity term off)"
        )
    distinct, k = 1.0, n_clusters
    if dedup:
        if groups is None:
            groups = duplicate_groups(z, threshold)
        elif len(groups) != len(z):
            raise ValueError(f"dataset '{name}': {len(groups)} duplicate groups for {len(z)} sample vectors")
        _, first = np.unique(np.asarray(groups), return_index=True)
        distinct = len(first) / len(z)
        z = z[np.sort(first)]
        k = min(n_clusters, len(z) - 1)
        if k < 2:  # one or two distinct samples: nothing to cluster
            labels = np.zeros(len(z), dtype=np.int64)
            h, pi = cluster_entropy(labels, n_clusters)
            return DiversityResult(0.0, h, labels, pi, n_clusters, distinct)
    import warnings

    with warnings.catch_warnings():  # duplicate points make k-means find fewer clusters than K: that is the answer
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(z)
    labels = km.labels_
    sil = float(silhouette_score(z, labels, metric="euclidean")) if len(np.unique(labels)) >= 2 else 0.0
    h, pi = cluster_entropy(labels, n_clusters)
    return DiversityResult(
        silhouette=sil, entropy=h, labels=labels, proportions=pi, n_clusters=n_clusters, distinct=distinct
    )
