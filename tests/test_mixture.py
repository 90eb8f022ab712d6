"""Mixture: its dataset is built without Python lists yet keeps the fingerprint (and rows) of earlier versions;
empty sources; budgets; validation with the processor before any model is loaded."""

import datasets
import pytest
from helpers import text_sources

from mixwise import DataError, Mixture, Plan
from mixwise.mixture import source_column_fingerprint
from mixwise.toy import corrupt_rows, make_source


def earlier_dataset(sources, column="source"):
    """`Mixture.dataset` as mixwise 0.1.0 built it (a Python list per source)."""
    parts = []
    for s in sources:
        ds = s.dataset
        if column in ds.column_names:
            ds = ds.remove_columns(column)
        parts.append(ds.add_column(column, [s.name] * len(ds)))
    return datasets.concatenate_datasets(parts)


CASES = {
    "plain": (lambda: {"count": make_source("count", 10), "text": text_sources({"t": 9})["t"]}, "raise"),
    "skipped rows": (
        lambda: {
            "count": make_source("count", 10),
            "colour": corrupt_rows(make_source("colour", 12), image_row=3, empty_answer_row=9),
        },
        "skip",
    ),  # fmt: skip
    "shuffled source": (
        lambda: {"count": make_source("count", 10).shuffle(seed=1), "text": text_sources({"t": 9})["t"]},
        "raise",
    ),  # fmt: skip
    "empty source": (
        lambda: {
            "text": text_sources({"t": 9})["t"],
            "none": text_sources({"n": 2})["n"].select([]),
            "colour": corrupt_rows(make_source("colour", 12), image_row=3),
        },
        "skip",
    ),  # fmt: skip
    "not validated": (
        lambda: {"count": make_source("count", 7).select([6, 2, 4]), "text": text_sources({"t": 5})["t"]},
        False,
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
def test_dataset_has_the_rows_and_fingerprint_of_earlier_versions(case):
    make, validate = CASES[case]
    mixture = Mixture(make(), budget=5, validate=validate)
    new, old = mixture.dataset, earlier_dataset(mixture.sources)
    assert new._fingerprint == old._fingerprint  # datastores keyed on it are found again
    assert len(new) == len(old) == mixture.total_size
    assert new.column_names == old.column_names
    assert (
        new.with_format("arrow")[:]
        .drop_columns(["images"] if "images" in new.column_names else [])
        .equals(old.with_format("arrow")[:].drop_columns(["images"] if "images" in old.column_names else []))
    )
    for name in mixture.names:
        lo, hi = mixture.offsets[name], mixture.offsets[name] + mixture.sizes[name]
        assert set(new["source"][lo:hi]) <= {name}


def test_an_empty_source_is_in_the_mixture_with_no_rows():
    pool = {"a": text_sources({"a": 6})["a"], "empty": text_sources({"e": 3})["e"].select([])}
    mixture = Mixture(pool, budget=8)
    assert mixture.plan.counts == {"a": 8, "empty": 0} and len(mixture.indices()) == 8
    assert set(mixture.dataset.select(mixture.indices())["source"]) == {"a"}
    with pytest.raises(ValueError, match="are empty"):
        mixture.set_plan(Plan.from_weights({"a": 1, "empty": 1}, mixture.sizes, 8))
    with pytest.raises(ValueError, match="every source of the mixture is empty"):
        Mixture({"empty": pool["empty"]}, budget=2)


def test_a_source_emptied_by_skipping_says_why():
    bad = make_source("count", 3)
    for row in range(3):
        bad = corrupt_rows(bad, empty_answer_row=row)
    with pytest.raises(DataError, match=r"source 'count', field 'rows': validation skipped every one of its 3 rows \(empty answer: 3\)"):  # fmt: skip
        Mixture({"count": bad, "ok": make_source("colour", 4)}, budget=4, validate="skip")


@pytest.mark.parametrize("budget", [12.5, "12", 0, -3])
def test_a_budget_is_a_positive_whole_number(budget):
    with pytest.raises(ValueError, match="budget must be a positive whole number of rows"):
        Mixture(text_sources({"a": 20}), budget=budget)


def test_the_processor_and_max_length_are_checked_before_any_model(tiny_llava):
    _, processor = tiny_llava
    pool = {"count": make_source("count", 6), "chart": make_source("chart", 6)}
    Mixture(pool, budget=4, processing_class=processor)  # max_length=None: every toy row fits
    with pytest.raises(DataError, match=r"source 'count', row 0, field 'messages': answer truncated away"):
        Mixture(pool, budget=4, processing_class=processor, max_length=22)
    with pytest.raises(DataError, match=r"skipped every one of its 6 rows \(answer truncated away: 6\)"):
        Mixture(pool, budget=4, processing_class=processor, max_length=22, validate="skip")


@pytest.mark.parametrize("name, n", [("count", 70_001), ("a", 1), ("ab", 1_000), ("é-ß", 2_001), ("x" * 300, 5)])
def test_the_source_column_fingerprint_is_the_one_datasets_computes(name, n):
    ds = datasets.Dataset.from_dict({"x": list(range(n))})
    assert source_column_fingerprint(ds._fingerprint, "source", name, n) == ds.add_column("source", [name] * n)._fingerprint  # fmt: skip
