"""Source diversity: k-means silhouette plus normalized cluster entropy (scikit-learn).

DataProphet (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1), for a source s:

* per sample u, `z_u = normalize(mean of u's field unit vectors)` (Q, A and I) — [`sample_vectors`];
* k-means with K clusters (default 10) on the z's;
* `Sil(s)` = mean silhouette coefficient (Euclidean) — `sklearn.metrics.silhouette_score`;
* `H(s) = −(1/log K) Σ_k π_k log π_k`, π_k the share of samples in cluster k (0·log 0 = 0), in [0, 1];
* diversity = `Sil(s) + H(s)`.

The silhouette needs at least 2 distinct clusters: when k-means finds a single one (all samples identical),
`Sil = 0` by convention. A source needs more than K rows to be clustered into K clusters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .embeddings import l2_normalize

__all__ = ["DiversityResult", "cluster_entropy", "diversity", "sample_vectors"]


@dataclass
class DiversityResult:
    """Silhouette, normalized entropy, their sum, and the clustering behind them."""

    silhouette: float
    entropy: float
    labels: np.ndarray
    proportions: np.ndarray
    n_clusters: int

    @property
    def value(self) -> float:
        """`Sil + H`, DataProphet's diversity term."""
        return self.silhouette + self.entropy


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


def diversity(
    z: np.ndarray, n_clusters: int = 10, seed: int = 0, n_init: int = 10, name: str = "?"
) -> DiversityResult:
    """k-means (K = `n_clusters`, seeded) on `z`, then mean Euclidean silhouette and normalized entropy.

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
    import warnings

    with warnings.catch_warnings():  # duplicate points make k-means find fewer clusters than K: that is the answer
        warnings.simplefilter("ignore")
        km = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=seed).fit(z)
    labels = km.labels_
    sil = float(silhouette_score(z, labels, metric="euclidean")) if len(np.unique(labels)) >= 2 else 0.0
    h, pi = cluster_entropy(labels, n_clusters)
    return DiversityResult(silhouette=sil, entropy=h, labels=labels, proportions=pi, n_clusters=n_clusters)
