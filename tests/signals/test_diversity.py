"""Diversity: silhouette (Euclidean) + normalized entropy of a k-means clustering, against the definitions."""

import math

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from mixwise.signals.diversity import cluster_entropy, diversity, sample_vectors


def blobs(sizes, dim=8, spread=0.01, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[: len(sizes)] * 5
    return np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])


def test_entropy_matches_the_definition():
    h, pi = cluster_entropy(np.array([0, 0, 1, 1]), 2)
    assert h == pytest.approx(1.0) and pi.tolist() == [0.5, 0.5]
    h, _ = cluster_entropy(np.array([0, 0, 1, 1]), 4)  # normalized by log K, K = 4: log 2 / log 4
    assert h == pytest.approx(0.5)
    labels = np.array([0] * 6 + [1] * 3 + [2])
    pi = np.array([0.6, 0.3, 0.1])
    assert cluster_entropy(labels, 10)[0] == pytest.approx(-(pi * np.log(pi)).sum() / math.log(10))
    assert cluster_entropy(np.zeros(5, dtype=int), 10)[0] == 0.0


def test_silhouette_agrees_with_scikit_learn():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(60, 6))
    d = diversity(z, n_clusters=10, seed=3)
    labels = KMeans(n_clusters=10, n_init=10, random_state=3).fit(z).labels_
    assert d.silhouette == pytest.approx(silhouette_score(z, labels, metric="euclidean"))
    assert np.array_equal(d.labels, labels)
    assert d.value == pytest.approx(d.silhouette + d.entropy)
    assert d.proportions.sum() == pytest.approx(1.0)


def test_separated_balanced_clusters_score_high_and_a_lopsided_source_lower():
    balanced = diversity(blobs([10] * 4), n_clusters=4)
    assert balanced.silhouette > 0.95 and balanced.entropy == pytest.approx(1.0)
    lopsided = diversity(blobs([37, 1, 1, 1]), n_clusters=4)
    assert lopsided.entropy < 0.5
    assert lopsided.value < balanced.value


def test_identical_samples_have_zero_silhouette():
    d = diversity(np.ones((20, 3)), n_clusters=10)
    assert d.silhouette == 0.0 and d.entropy == 0.0


def test_too_few_rows_names_the_dataset():
    with pytest.raises(ValueError, match="dataset 'tiny'.*more than 10 rows"):
        diversity(np.eye(10), n_clusters=10, name="tiny")


def test_sample_vectors_normalized_average_of_unit_fields():
    q = np.array([[2.0, 0.0], [0.0, 1.0]])
    a = np.array([[0.0, 5.0], [0.0, 2.0]])
    z = sample_vectors([q, a, None])
    np.testing.assert_allclose(z, [[2**-0.5, 2**-0.5], [0.0, 1.0]])
    wide = sample_vectors([q, np.ones((2, 3))])  # different widths: concatenated unit vectors, normalized
    assert wide.shape == (2, 5)
    np.testing.assert_allclose(np.linalg.norm(wide, axis=1), 1.0)
    with pytest.raises(ValueError, match="different numbers of rows"):
        sample_vectors([q, np.ones((3, 2))])


def test_duplicates_no_longer_score_best_with_duplicate_aware_diversity():
    rng = np.random.default_rng(0)
    copies = np.repeat(rng.normal(size=(4, 6)), 5, axis=0)  # 4 distinct rows, 5 copies each
    varied = rng.normal(size=(20, 6))
    # the paper's term: k-means (K = 4) on the copies finds the 4 points, a perfect silhouette of 1
    paper = diversity(copies, n_clusters=4, seed=0)
    assert paper.silhouette == pytest.approx(1.0) and paper.value > diversity(varied, 4, seed=0).value
    # duplicate-aware: the 4 distinct rows only (K' = min(4, 4 - 1) = 3 clusters), scaled by the distinct share 4/20
    dedup = diversity(copies, n_clusters=4, seed=0, dedup=True)
    on_distinct = diversity(copies[::5], n_clusters=3, seed=0)
    assert dedup.distinct == pytest.approx(0.2)
    entropy_k4 = cluster_entropy(on_distinct.labels, 4)[0]  # the entropy stays normalized by log K, K = 4
    assert dedup.value == pytest.approx((on_distinct.silhouette + entropy_k4) * 0.2)
    assert dedup.value < diversity(varied, 4, seed=0, dedup=True).value
    # the same with the groups given (exact duplicates by content), and with no duplicate at all
    given = diversity(copies, n_clusters=4, seed=0, dedup=True, groups=np.repeat(np.arange(4), 5))
    assert given.value == pytest.approx(dedup.value)
    assert diversity(varied, 4, seed=0, dedup=True).value == pytest.approx(diversity(varied, 4, seed=0).value)
    with pytest.raises(ValueError, match="duplicate groups"):
        diversity(copies, n_clusters=3, dedup=True, groups=np.arange(3))
