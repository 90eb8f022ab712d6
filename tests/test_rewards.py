import pytest

from mixwise.rewards import (
    exact_match,
    multiple_choice,
    numeric_match,
    parse_choice,
    parse_number,
    per_source,
    resolve_reward,
)


def conv(text):
    return [{"role": "assistant", "content": text}]


def test_exact_match_normalizes_and_reads_both_formats():
    assert exact_match(["The Red.", conv(" red "), "blue"], answer=["red", "red", "red"]) == [1.0, 1.0, 0.0]
    assert exact_match(["4"], solution=["4"]) == [1.0]
    with pytest.raises(KeyError, match="answer"):
        exact_match(["x"])
    with pytest.raises(ValueError, match="2 entries for 1"):
        exact_match(["x"], answer=["a", "b"])


def test_numeric_match_tolerance():
    assert parse_number("about 1,234.5 units") == 1234.5 and parse_number("50%") == 0.5
    assert parse_number("none") is None
    got = numeric_match(["It is 102", "98", "110", "no idea"], answer=["100"] * 4)
    assert got == [1.0, 1.0, 0.0, 0.0]
    assert numeric_match(["110"], answer=["100"], rel_tol=0.2) == [1.0]


def test_multiple_choice():
    assert parse_choice("(b) because") == "B" and parse_choice("Answer: C.") == "C"
    assert multiple_choice(["B", "(c)", "I think A", "none"], answer=["B", "C", "B", "A"]) == [1.0, 1.0, 0.0, 0.0]


def test_per_source_logs_means():
    logged = {}
    fn = per_source(exact_match)
    out = fn(
        ["a", "b", "a", "a"],
        answer=["a", "a", "a", "b"],
        source=["s1", "s1", "s2", "s2"],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert out == [1.0, 0.0, 1.0, 0.0]
    assert logged == {"rewards_by_source/s1/exact_match": 0.5, "rewards_by_source/s2/exact_match": 0.5}
    assert fn.__name__ == "exact_match"


def test_resolve_reward():
    assert resolve_reward("exact_match") is exact_match
    assert resolve_reward("mixwise.rewards.numeric_match") is numeric_match
    with pytest.raises(ValueError, match="cannot import reward function 'nope.fn'"):
        resolve_reward("nope.fn")
