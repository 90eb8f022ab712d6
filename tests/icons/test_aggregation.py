"""Influence (streamed, equal to the explicit N × |V| mean) and every aggregator against hand-computed selections."""

import numpy as np
import pytest

from mixwise.icons.aggregation import aggregate, doubled_rank_sum, top_set_overlap, vote_counts, vote_histogram

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


def test_vote_hand_computed_with_tie_break():
    votes, taus = vote_counts(S, p_vote=1 / 3)
    # 66.7th percentiles (linear interpolation): 0.625 + 1/3 * 0.125, 0.5 + 1/3 * 0.25, 0.5 + 1/3 * 0.25
    np.testing.assert_allclose(taus, [0.625 + 0.125 / 3, 0.5 + 0.25 / 3, 0.5 + 0.25 / 3])
    assert votes.tolist() == [1, 2, 2, 0, 1, 0]
    # doubled average ranks (ascending): row 0 = 2*(6 + 1 + 3.5), row 4 = 2*(2 + 2 + 5); row 0 and row 3 tie in task 2
    assert doubled_rank_sum(S, np.ones(6, bool)).tolist() == [21, 22, 26, 21, 18, 18]
    sel = aggregate(S, 3, "vote", p_vote=1 / 3)
    # rows 1 and 2 have 2 votes (row 2's mean percentile rank is higher); rows 0 and 4 tie at 1 vote: row 0 ranks higher
    assert sel.order.tolist() == [2, 1, 0] and sel.rows.tolist() == [0, 1, 2]
    # p_vote defaults to n_select / N (ICONS: p_vote = p_select)
    assert aggregate(S, 2, "vote").info["p_vote"] == pytest.approx(1 / 3)


def test_vote_p_vote_and_p_select_are_separate():
    sel = aggregate(S, 2, "vote", p_vote=0.5)
    # median thresholds 0.5625, 0.4375, 0.5 -> votes 2, 2, 2, 2, 1, 1; rank sums 21, 22, 26, 21 -> rows 2, 1
    assert sel.votes.tolist() == [2, 2, 2, 2, 1, 1]
    assert sel.order.tolist() == [2, 1]


def test_vote_full_ties_fall_back_to_row_id():
    s = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    sel = aggregate(s, 2, "vote", p_vote=0.5)
    assert sel.votes.tolist() == [1, 1, 1, 1]
    assert sel.order.tolist() == [0, 1]  # same votes, same mean percentile rank -> lower row id


def test_score_aggregators_hand_computed():
    # merge: 1.5, 1.625, 1.875, 1.5, 1.25, 1.25 -> 2, 1, then 0 before 3 (tie, row id)
    assert aggregate(S, 4, "merge").order.tolist() == [2, 1, 0, 3]
    # max: 0.875 (rows 0, 2), 0.75 (rows 1, 4)
    assert aggregate(S, 3, "max").order.tolist() == [0, 2, 1]
    mu, sd = S.mean(0), S.std(0)
    gaus = ((S - mu) / sd).sum(1)
    assert aggregate(S, 3, "gausnorm").order.tolist() == np.argsort(-gaus, kind="stable")[:3].tolist()
    sumnorm = (S / S.sum(0)).sum(1)
    assert aggregate(S, 3, "sumnorm").order.tolist() == np.argsort(-sumnorm, kind="stable")[:3].tolist()
    assert aggregate(S, 2, "specialist", task=1).order.tolist() == [2, 1]
    assert aggregate(S, 2, "specialist", task="b", tasks=["a", "b", "c"]).order.tolist() == [2, 1]
    # a constant task contributes nothing to gausnorm instead of dividing by zero
    flat = np.column_stack([S[:, 0], np.full(6, 0.5)])
    assert aggregate(flat, 2, "gausnorm").order.tolist() == [0, 1]


def test_sumnorm_is_guarded():
    bad = S.copy()
    bad[:, 1] -= bad[:, 1].mean()  # sums to ~0
    with pytest.raises(ValueError, match="sumnorm: the influence of task 'b'"):
        aggregate(bad, 2, "sumnorm", tasks=["a", "b", "c"])
    with pytest.raises(ValueError, match="flips"):
        aggregate(-S, 2, "sumnorm")


def test_rank_aggregators_hand_computed():
    # round robin: task 0 takes row 0, task 1 row 2, task 2 (row 2 taken) row 4, task 0 row 1
    assert aggregate(S, 4, "round_robin").order.tolist() == [0, 2, 4, 1]
    # min rank: best ranks 0, 1, 0, 2, 1, 2; rank sums 7, 7, 5, 8, 9, 9
    assert aggregate(S, 3, "min_rank").order.tolist() == [2, 0, 1]
    assert aggregate(S, 6, "min_rank").order.tolist() == [2, 0, 1, 4, 3, 5]


def test_nan_rows_are_never_selected():
    s = np.vstack([S, [[np.nan, np.nan, np.nan]]])
    for method in ("vote", "merge", "max", "gausnorm", "sumnorm", "round_robin", "min_rank", "specialist"):
        kwargs = {"task": 0} if method == "specialist" else {}
        assert 6 not in aggregate(s, 6, method, **kwargs).order.tolist()
    assert aggregate(s, 3, "vote", p_vote=1 / 3).order.tolist() == [2, 1, 0]  # NaN row ignored in percentiles
    with pytest.raises(ValueError, match="cannot select 7 rows"):
        aggregate(s, 7, "merge")
    with pytest.raises(ValueError, match="unknown aggregator"):
        aggregate(S, 2, "borda")
    with pytest.raises(ValueError, match="positive integer"):
        aggregate(S, 0, "vote")


def test_overlap_and_histogram():
    ov = top_set_overlap(S, 2)  # top-2 sets: {0, 1}, {2, 1}, {2, 4}
    np.testing.assert_allclose(ov, [[1, 0.5, 0], [0.5, 1, 0.5], [0, 0.5, 1]])
    hist = vote_histogram(np.array([1, 2, 2, 0, 1, 0]), 3, np.array([2, 1, 0]))
    assert hist == {"all": [2, 2, 2, 0], "selected": [0, 1, 2, 0]}


# Two disjoint tasks: rows 0-3 matter to task 0, rows 4-5 to task 1 only a little, row 6 to both.
DISJOINT = np.array(
    [
        [0.9, 0.0],
        [0.8, 0.0],
        [0.7, 0.0],
        [0.6, 0.0],
        [0.0, 0.3],
        [0.0, 0.2],
        [0.5, 0.5],
    ]
)


def test_coverage_floor_keeps_an_isolated_task_covered():
    # plain vote, p_vote = 3/7: task 0 votes {0, 1, 2}, task 1 votes {6, 4, 5}; the tie on one vote falls to the
    # doubled rank sum, which favours task 0's rows, so task 1 gets only its shared row 6
    plain = aggregate(DISJOINT, 3, "vote")
    assert plain.order.tolist() == [6, 0, 1]
    # floor 2/3: int(2/3 * 3 // 2) = 1 row per task first by round robin (task 0: row 0, task 1: row 6), then the vote
    floored = aggregate(DISJOINT, 3, "vote", coverage_floor=2 / 3)
    assert floored.order.tolist()[:2] == [0, 6] and floored.info["coverage"] == {"floor": 2 / 3, "per_task": 1}
    # floor 1 with 4 rows: 2 per task, the round robin: task 0 row 0, task 1 row 6, task 0 row 1, task 1 row 4
    assert aggregate(DISJOINT, 4, "vote", coverage_floor=1.0).order.tolist() == [0, 6, 1, 4]
    with pytest.raises(ValueError, match="coverage_floor"):
        aggregate(DISJOINT, 3, "vote", coverage_floor=1.5)


def test_duplicates_count_once_until_the_budget_forces_repeats():
    scores = np.array([[0.9], [0.9], [0.9], [0.5], [0.4]])  # rows 0-2: one row three times
    groups = np.array([7, 7, 7, 1, 2])
    plain = aggregate(scores, 3, "max")
    assert plain.order.tolist() == [0, 1, 2]  # the paper's aggregation takes every copy
    dedup = aggregate(scores, 3, "max", groups=groups)
    assert dedup.order.tolist() == [0, 3, 4] and dedup.info["dedup"] == {"distinct_rows": 3, "rows": 5}
    # a budget of 4 > 3 distinct rows: the distinct rows first, then a copy
    assert aggregate(scores, 4, "max", groups=groups).order.tolist() == [0, 3, 4, 1]
    with pytest.raises(ValueError, match="one id per row"):
        aggregate(scores, 3, "max", groups=np.array([0, 1]))


def reference_round_robin(scores: np.ndarray, n_select: int) -> list[int]:
    """Each task in turn adds its best row not yet taken, from a full sort of the pool (ties: row id)."""
    valid = np.isfinite(scores).all(axis=1)
    rows = np.nonzero(valid)[0]
    orders = [rows[np.lexsort((rows, -scores[rows, k]))].tolist() for k in range(scores.shape[1])]
    taken: list[int] = []
    while len(taken) < n_select:
        for order in orders:
            if len(taken) < n_select:
                taken.append(next(r for r in order if r not in taken))
    return taken


@pytest.mark.parametrize("seed", range(6))
def test_partial_sorts_equal_full_sorts_with_ties_and_nan(seed):
    """The round robin, the coverage floor and the top-M aggregators sort only the rows that can be selected; with
    massive ties (scores rounded to one decimal) and NaN rows they select exactly what a full sort selects."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.standard_normal((300, 4)), 1).astype(np.float32)
    scores[rng.random(300) < 0.05, int(rng.integers(4))] = np.nan
    valid = np.isfinite(scores).all(axis=1)
    for m in (1, 7, 40, 149):
        assert aggregate(scores, m, "round_robin").order.tolist() == reference_round_robin(scores, m)
        rows = np.nonzero(valid)[0]
        best = scores[rows].max(axis=1).astype(np.float64)
        assert aggregate(scores, m, "max").order.tolist() == rows[np.lexsort((rows, -best))][:m].tolist()
        covered = aggregate(scores, m, "vote", coverage_floor=1.0).order.tolist()
        assert covered[: m // 4 * 4] == reference_round_robin(scores, m // 4 * 4)


def test_float32_scores_select_what_their_float64_copy_selects():
    """float32 influence (as stored) is not copied to float64 as a whole: the vote's thresholds, votes and order
    are the ones of the float64 copy."""
    scores = np.random.default_rng(0).standard_normal((500, 5)).astype(np.float32)
    scores[3] = np.nan
    for kw in ({}, {"coverage_floor": 0.5}, {"groups": np.arange(500) // 2}):
        a, b = aggregate(scores, 60, "vote", **kw), aggregate(scores.astype(np.float64), 60, "vote", **kw)
        assert a.order.tolist() == b.order.tolist() and a.thresholds == b.thresholds
        assert a.votes.tolist() == b.votes.tolist()
