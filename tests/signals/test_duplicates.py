"""Near-duplicate groups: the hashed, streamed grouping equals the exhaustive greedy one; arrays and stores agree."""

import numpy as np
import pytest

from mixwise.signals.datastore import Datastore
from mixwise.signals.duplicates import duplicate_groups


def exhaustive_groups(x: np.ndarray, threshold: float) -> np.ndarray:
    """The definition, computed by comparing every row with every earlier representative (O(n · distinct · d))."""
    norm = np.linalg.norm(x, axis=1)
    u = x / np.maximum(norm, 1e-12)[:, None]
    reps: list[int] = []
    groups = np.empty(len(x), np.int64)
    first_zero = None
    for i in range(len(x)):
        if norm[i] == 0:
            if first_zero is None:
                first_zero = i
                groups[i] = len(reps)
                reps.append(i)
            else:
                groups[i] = groups[first_zero]
            continue
        match = next((r for r in reps if norm[r] > 0 and float(u[r] @ u[i]) >= threshold), None)
        if match is None:
            groups[i] = len(reps)
            reps.append(i)
        else:
            groups[i] = groups[match]
    return groups


def planted(seed: int, n: int = 900, dim: int = 48) -> np.ndarray:
    """Distinct rows, copies of them at noise levels on both sides of the thresholds tested, and a few zero rows."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n // 3, dim))
    noise = rng.choice([1e-4, 0.01, 0.02, 0.03, 0.045, 0.06, 0.2], size=(n // 3, 1))
    copies = base[rng.integers(0, len(base), n // 3)] + rng.standard_normal((n // 3, dim)) * noise
    x = np.concatenate([base, copies, rng.standard_normal((n - 2 * (n // 3), dim))])[rng.permutation(n)]
    x[rng.integers(0, n, 4)] = 0.0
    return x


@pytest.mark.parametrize("threshold", [0.9995, 0.999, 0.995])
@pytest.mark.parametrize("seed", [0, 1])
def test_hashed_groups_equal_the_exhaustive_definition(threshold, seed):
    x = planted(seed)
    expected = exhaustive_groups(x, threshold)
    got = duplicate_groups(x, threshold, block_rows=128)  # several blocks: representatives carried across them
    assert got.tolist() == expected.tolist()
    n_groups = len(set(expected.tolist()))
    assert len(x) // 3 < n_groups < len(x)  # the planted copies straddle the threshold: some merged, some not
    assert got.tolist() == duplicate_groups(x, threshold, block_rows=1000).tolist()  # independent of the blocks


def test_group_ids_in_order_of_first_appearance_and_bitwise_mode():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1e-5], [0.0, 0.0], [0.0, 2.0], [0.0, 0.0], [1.0, 0.0]])
    assert duplicate_groups(x, 0.999).tolist() == [0, 1, 0, 2, 1, 2, 0]
    assert duplicate_groups(x, 1.0).tolist() == [0, 1, 2, 3, 4, 3, 0]  # bitwise: only exact copies merge


def test_store_is_streamed_with_skipped_rows_as_one_group(tmp_path):
    x = planted(3, n=300, dim=16).astype(np.float32)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.maximum(norms, 1e-12)[:, None]
    skipped = norms == 0
    norms = np.where(skipped, np.nan, norms).astype(np.float32)  # what the featurizer writes for a skipped row
    store = Datastore.create(tmp_path / "s", n_rows=len(x), dim=16, identity={"t": 1}, chunk_size=64)
    for c in store.pending():
        lo, hi = store.chunk_range(c)
        store.write_chunk(c, unit[lo:hi], norms[lo:hi])
        store.mark_done(c)
    stored = np.where(skipped[:, None], 0.0, store.load()[0].astype(np.float32))
    expected = exhaustive_groups(stored.astype(np.float64), 0.999)
    assert duplicate_groups(Datastore.open(tmp_path / "s"), 0.999, block_rows=50).tolist() == expected.tolist()
    assert len(set(expected[skipped].tolist())) == 1


def test_rejects_a_non_matrix():
    with pytest.raises(ValueError, match="matrix"):
        duplicate_groups(np.zeros(5))


def test_a_large_cluster_of_near_copies():
    """Thousands of noisy copies of a few rows share buckets in every table; copies far enough from their source
    start new representatives in the same buckets, so each row must be checked against all of them, in row order."""
    rng = np.random.default_rng(5)
    sources = rng.standard_normal((3, 32))
    noise = rng.choice([1e-4, 0.03, 0.05], size=(2400, 1))
    x = sources[rng.integers(0, 3, 2400)] + rng.standard_normal((2400, 32)) * noise
    expected = exhaustive_groups(x, 0.998)
    assert 3 < len(set(expected.tolist())) < 600
    assert duplicate_groups(x, 0.998, block_rows=256).tolist() == expected.tolist()
