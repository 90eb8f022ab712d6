"""Influence (streamed, equal to the explicit N × |V| mean) and every aggregator against hand-computed selections."""

import numpy as np
import pytest

from mixwise.signals.datastore import Datastore
from mixwise.signals.influence import combine_influence, stream_scores, task_means

# Dyadic values, so that sums are exact and the hand computations below hold bit for bit.
S = np.array(
    [
        [0.875, 0.125, 0.5],  # row 0
        [0.75, 0.75, 0.125],  # row 1
        [0.125, 0.875, 0.875],  # row 2
        [0.5, 0.5, 0.5],  # row 3
        [0.25, 0.25, 0.75],  # row 4
        [0.625, 0.375, 0.25],  # row 5
    ]
)


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_streamed_influence_equals_the_explicit_mean_over_validation_rows(tmp_path):
    rng = np.random.default_rng(0)
    pool = unit(rng.standard_normal((23, 16))).astype(np.float32)
    store = Datastore.create(tmp_path / "pool", 23, 16, {"x": 1}, chunk_size=5, shard_size=10)
    store.write(0, pool, np.ones(23, np.float32))
    pool16 = store.load()[0].astype(np.float32)  # what the store holds (float16)
    val = {"a": unit(rng.standard_normal((5, 16))), "b": unit(rng.standard_normal((3, 16)))}
    for name, v in val.items():
        names, means = task_means(v, name=name)
        assert names == [name]
        explicit = (pool16 @ v.T).mean(axis=1)  # the N x |V| matrix, then the mean over validation rows
        np.testing.assert_allclose(stream_scores(store, means, block_rows=4)[:, 0], explicit, rtol=1e-5, atol=1e-6)
    # subtasks: one column per subtask, then max over subtasks
    labels = ["x", "y", "x", "y", "y"]
    names, means = task_means(val["a"], subtasks=labels, name="a")
    assert names == ["x", "y"]
    cols = stream_scores(store, means)
    np.testing.assert_allclose(cols[:, 0], (pool16 @ val["a"][[0, 2]].T).mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cols[:, 1], (pool16 @ val["a"][[1, 3, 4]].T).mean(1), rtol=1e-5, atol=1e-6)
    combined = combine_influence([{"a": cols}], subtask_columns={"a": names})
    np.testing.assert_allclose(combined.scores[:, 0], cols.max(axis=1), rtol=1e-6)


def test_skipped_rows_are_excluded():
    v = unit(np.random.default_rng(1).standard_normal((4, 8)))
    norms = np.array([1.0, np.nan, 1.0, 1.0])
    _, means = task_means(v, norms, name="t")
    np.testing.assert_allclose(means[0], v[[0, 2, 3]].mean(0))
    with pytest.raises(ValueError, match="target 'vqa' has no rows"):
        task_means(np.zeros((0, 8)), name="vqa")
    with pytest.raises(ValueError, match="target 'vqa': every validation row was skipped"):
        task_means(v, np.full(4, np.nan), name="vqa")
    with pytest.raises(ValueError, match="subtask 'y'"):
        task_means(v, norms, subtasks=["x", "y", "x", "x"], name="vqa")


def test_checkpoints_are_summed_with_normalised_learning_rate_weights():
    a = {"t": np.array([[1.0], [3.0]])}
    b = {"t": np.array([[4.0], [0.0]])}
    out = combine_influence([a, b], weights=[2e-4, 1e-4])
    assert out.checkpoint_weights == pytest.approx([2 / 3, 1 / 3])
    np.testing.assert_allclose(out.scores[:, 0], [2 / 3 * 1 + 1 / 3 * 4, 2 / 3 * 3])
    with pytest.raises(ValueError, match="non-negative"):
        combine_influence([a, b], weights=[1.0])
