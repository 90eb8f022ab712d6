import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mixwise import Plan, allocate
from mixwise.plan import SourcePlan

weights_strategy = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
    min_size=1,
    max_size=12,
).filter(lambda w: sum(w.values()) > 0)


@settings(max_examples=300, deadline=None)
@given(weights=weights_strategy, budget=st.integers(min_value=1, max_value=10**7))
def test_allocation_sums_exactly_to_budget(weights, budget):
    counts = allocate(weights, budget)
    assert sum(counts.values()) == budget
    total = sum(weights.values())
    for name, w in weights.items():
        quota = budget * w / total
        # largest remainder never moves a count more than one unit from its exact quota
        assert math.floor(quota) - 1e-6 <= counts[name] <= math.ceil(quota) + 1e-6
        if w == 0:
            assert counts[name] == 0


def test_allocation_largest_remainder_example():
    # quotas 3.33.., 3.33.., 3.33.. -> the first listed source gets the leftover unit
    assert allocate({"a": 1, "b": 1, "c": 1}, 10) == {"a": 4, "b": 3, "c": 3}
    # quotas 1.6, 2.4, 6.0 -> leftover goes to the largest fractional part (a)
    assert allocate({"a": 0.16, "b": 0.24, "c": 0.6}, 10) == {"a": 2, "b": 2, "c": 6}


@pytest.mark.parametrize(
    "weights, match",
    [
        ({"a": float("nan"), "b": 1.0}, "source 'a'.*finite"),
        ({"a": 1.0, "b": -2.0}, "source 'b'.*negative"),
        ({"a": 0.0, "b": 0.0}, "all weights are zero"),
        ({"a": "x"}, "source 'a'.*not a number"),
        ({"a": float("inf")}, "source 'a'.*finite"),
        ({}, "no weights"),
    ],
)
def test_bad_weights_rejected(weights, match):
    with pytest.raises(ValueError, match=match):
        allocate(weights, 10)


@pytest.mark.parametrize("budget", [0, -5, 2.5, "10", True])
def test_bad_budget_rejected(budget):
    with pytest.raises(ValueError, match="budget"):
        allocate({"a": 1.0}, budget)


def test_empty_source_with_weight_rejected():
    with pytest.raises(ValueError, match=r"\['b'\] are empty"):
        Plan.from_weights({"a": 1, "b": 1}, {"a": 5, "b": 0}, 10)
    # an empty source with zero weight is fine
    plan = Plan.from_weights({"a": 1, "b": 0}, {"a": 5, "b": 0}, 10)
    assert plan.counts == {"a": 10, "b": 0}


def test_unknown_source_rejected():
    with pytest.raises(ValueError, match=r"unknown sources \['zz'\]"):
        Plan.from_weights({"a": 1, "zz": 1}, {"a": 5}, 10)


def test_resolve_without_replacement_then_passes_plus_remainder():
    plan = Plan.from_weights({"small": 1, "big": 1}, {"small": 7, "big": 1000}, 40, seed=5)
    rows = plan.resolve()[0]
    assert len(rows["big"]) == 20 and len(set(rows["big"].tolist())) == 20  # no replacement
    small = rows["small"]
    assert len(small) == 20
    counts = np.bincount(small, minlength=7)
    assert counts.min() >= 2 and counts.max() <= 3  # two full passes + 6 distinct extra rows
    assert (counts == 3).sum() == 20 - 14
    assert plan.sources["small"].repeated and not plan.sources["big"].repeated
    assert plan.to_dict()["sources"]["small"]["repeated"] is True
    # deterministic by seed, different for another seed
    assert all((a == b).all() for a, b in zip(plan.resolve()[0].values(), rows.values()))
    other = plan.resolve(seed=6)[0]
    assert not np.array_equal(other["big"], rows["big"])


def test_json_round_trip_is_exact(tmp_path):
    weights = {"a": 0.1, "b": 1 / 3, "c": 2.0}
    plan = Plan.from_weights(
        weights, {"a": 10, "b": 20, "c": 30}, 77, method="fixed", seed=9, config={"k": [1, 2]}, fingerprints={"x": "y"}
    )
    assert Plan.from_json(plan.to_json()) == plan
    path = plan.save(tmp_path)
    assert path.endswith("selection.json")
    assert Plan.load(tmp_path) == plan
    d = json.loads(open(path).read())
    for key in ("method", "budget", "sources", "config", "fingerprints", "version", "seed"):
        assert key in d
    assert set(d["sources"]["a"]) >= {"weight", "count", "size"}

    per_sample = Plan.from_rows({"a": [3, 1, 1], "c": [0]}, {"a": 10, "b": 20, "c": 30}, method="icons")
    assert per_sample.budget == 4 and per_sample.counts == {"a": 3, "b": 0, "c": 1}
    assert Plan.from_json(per_sample.to_json()) == per_sample

    staged = Plan.staged([plan, Plan.uniform({"a": 10, "b": 20, "c": 30}, 12)], method="cadc")
    assert staged.budget == 89
    assert Plan.from_json(staged.to_json()) == staged


def test_from_rows_out_of_range():
    with pytest.raises(ValueError, match="source 'a'.*out of range"):
        Plan.from_rows({"a": [0, 10]}, {"a": 10})


def test_staged_plan_mismatched_sources():
    with pytest.raises(ValueError, match="stage 1"):
        Plan.staged([Plan.uniform({"a": 3}, 2), Plan.uniform({"b": 3}, 2)])


def test_sourceplan_repeated_for_explicit_rows():
    assert SourcePlan(weight=1, count=3, size=5, rows=[1, 1, 2]).repeated
    assert not SourcePlan(weight=1, count=2, size=5, rows=[1, 2]).repeated


@pytest.mark.parametrize("budget", [12.5, 0.5, "12", None])
def test_a_budget_that_is_not_a_whole_number_is_refused_not_truncated(budget):
    with pytest.raises(ValueError, match="budget must be a positive whole number of rows"):
        Plan.uniform({"a": 20, "b": 20}, budget)


def test_an_integral_float_budget_is_that_many_rows():
    assert Plan.uniform({"a": 20, "b": 20}, 12.0).budget == 12


def test_huge_weights_allocate_like_their_ratios():
    """1e308 weights overflow their sum to inf; the shares are scale-free, so they allocate like 1 : 1 : 2."""
    huge = Plan.from_weights({"a": 1e308, "b": 1e308, "c": 1.7e308}, {"a": 99, "b": 99, "c": 99}, 47)
    small = Plan.from_weights({"a": 1, "b": 1, "c": 1.7}, {"a": 99, "b": 99, "c": 99}, 47)
    assert huge.counts == small.counts and sum(huge.counts.values()) == 47
    assert huge.weights == pytest.approx(small.weights)
    assert allocate({"x": 1e308, "y": 1e308}, 3) == {"x": 2, "y": 1}


def test_uniform_leaves_empty_sources_out():
    plan = Plan.uniform({"a": 5, "empty": 0, "b": 3}, 9)
    assert plan.counts["empty"] == 0 and plan.counts["a"] + plan.counts["b"] == 9
    with pytest.raises(ValueError, match="every source is empty"):
        Plan.uniform({"a": 0, "b": 0}, 4)
