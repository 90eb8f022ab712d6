"""Bad command lines and bad data get an error that says what is wrong (exit 2, `mixwise CMD: ...`), and options
are honoured, not ignored: `allocate`, `select`, `score`."""

import json

import datasets
import pytest
from helpers import text_sources

from mixwise import Plan
from mixwise.cli import main
from mixwise.toy import corrupt_rows, make_source


@pytest.fixture()
def disk(tmp_path):
    """Two text sources and an empty one, saved; a weights file."""
    text_sources({"a": 6})["a"].save_to_disk(str(tmp_path / "a"))
    text_sources({"b": 4})["b"].save_to_disk(str(tmp_path / "b"))
    text_sources({"e": 2})["e"].select([]).save_to_disk(str(tmp_path / "empty"))
    (tmp_path / "w.json").write_text(json.dumps({"a": 1, "b": 3}))
    return tmp_path


def allocate(disk, *extra):
    return main(["allocate", "--weights", str(disk / "w.json"), "--out", str(disk / "p.json"), *extra])


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--budget is required"),
        (["--budget", "0"], "--budget must be a positive whole number of rows, got 0"),
        (["--budget", "-3"], "--budget must be a positive whole number of rows, got -3"),
    ],
)
def test_allocate_budget_errors_name_the_budget(disk, capsys, args, message):
    assert allocate(disk, *args, "--sources", str(disk / "a"), str(disk / "b")) == 2
    err = capsys.readouterr().err
    assert message in err and "empty" not in err and "size" not in err


@pytest.mark.parametrize(
    "content, message",
    [
        ("[1, 2]", "must hold a JSON object {source: weight}, got a JSON list"),
        ("{not json", "is not JSON"),
        ("{}", "is an empty JSON object"),
        (None, "no such file"),
    ],
)
def test_allocate_weights_file_errors(disk, capsys, content, message):
    path = disk / "bad.json"
    if content is not None:
        path.write_text(content)
    code = main(["allocate", "--weights", str(path), "--budget", "5", "--sources", str(disk / "a"), str(disk / "b")])
    assert code == 2 and message in capsys.readouterr().err


def test_allocate_needs_real_sizes(disk, capsys):
    assert allocate(disk, "--budget", "5") == 2
    assert "give the sources' sizes: --sources" in capsys.readouterr().err
    (disk / "sizes.json").write_text(json.dumps({"a": 6, "b": 4}))
    assert allocate(disk, "--budget", "5", "--sizes", str(disk / "sizes.json")) == 0
    assert Plan.load(disk / "p.json").sizes == {"a": 6, "b": 4}


def test_allocate_refuses_the_same_source_twice(disk, capsys):
    assert allocate(disk, "--budget", "5", "--sources", str(disk / "a"), str(disk / "b"), str(disk / "a")) == 2
    assert "is given twice" in capsys.readouterr().err


def test_allocate_with_huge_weights(disk):
    (disk / "w.json").write_text(json.dumps({"a": 1e308, "b": 1e308}))
    assert allocate(disk, "--budget", "8", "--sources", str(disk / "a"), str(disk / "b")) == 0
    assert Plan.load(disk / "p.json").counts == {"a": 4, "b": 4}


def test_allocate_with_an_empty_source(disk, capsys):
    (disk / "w.json").write_text(json.dumps({"a": 1, "b": 1, "empty": 0}))
    assert allocate(disk, "--budget", "6", "--sources", str(disk / "a"), str(disk / "b"), str(disk / "empty")) == 0
    assert Plan.load(disk / "p.json").counts == {"a": 3, "b": 3, "empty": 0}
    (disk / "w.json").write_text(json.dumps({"a": 1, "b": 1, "empty": 1}))
    with pytest.raises(ValueError, match=r"\['empty'\] are empty \(0 rows\)"):
        allocate(disk, "--budget", "6", "--sources", str(disk / "a"), str(disk / "b"), str(disk / "empty"))
    (disk / "w.json").write_text(json.dumps({"a": 1}))
    assert allocate(disk, "--budget", "6", "--sources", str(disk / "a"), str(disk / "b")) == 2
    assert "have no weight" in capsys.readouterr().err


def test_allocate_and_select_take_parquet_and_jsonl_files(disk):
    text_sources({"pq": 5})["pq"].to_parquet(str(disk / "pq.parquet"))
    text_sources({"js": 7})["js"].to_json(str(disk / "js.jsonl"))
    (disk / "w.json").write_text(json.dumps({"pq": 1, "js": 1}))
    assert allocate(disk, "--budget", "4", "--sources", str(disk / "pq.parquet"), str(disk / "js.jsonl")) == 0
    assert Plan.load(disk / "p.json").sizes == {"pq": 5, "js": 7}
    out = disk / "sel"
    assert main(["select", "--method", "random", "--pool", str(disk / "pq.parquet"), str(disk / "js.jsonl"), "--budget", "6", "--out", str(out)]) == 0  # fmt: skip
    assert Plan.load(out).budget == 6


def select(disk, *extra):
    return main(["select", "--method", "random", "--out", str(disk / "sel"), *extra])


@pytest.mark.parametrize("ratio", ["0", "-0.2", "1.5"])
def test_select_ratio_outside_0_1_is_refused(disk, capsys, ratio):
    assert select(disk, "--pool", str(disk / "a"), "--ratio", ratio) == 2
    assert "--ratio must be in (0, 1]" in capsys.readouterr().err
    assert not (disk / "sel" / "selection.json").exists()


def test_select_refuses_the_same_pool_twice(disk, capsys):
    assert select(disk, "--pool", str(disk / "a"), str(disk / "a"), "--budget", "2") == 2
    assert "is given twice" in capsys.readouterr().err


def test_select_with_an_empty_source(disk):
    assert select(disk, "--pool", str(disk / "a"), str(disk / "empty"), "--budget", "4") == 0
    plan = Plan.load(disk / "sel")
    assert plan.counts["empty"] == 0 and plan.budget == 4


def test_select_on_error_skip_skips_and_reports(tmp_path):
    bad = corrupt_rows(make_source("colour", 10, seed=1), image_row=2, empty_answer_row=5)
    bad.save_to_disk(str(tmp_path / "colour"))
    make_source("count", 6, seed=1).save_to_disk(str(tmp_path / "count"))
    pool = ["--pool", str(tmp_path / "colour"), str(tmp_path / "count")]
    with pytest.raises(Exception, match="row 2, field 'images'"):  # the default: fail naming the row
        main(["select", "--method", "random", *pool, "--budget", "16", "--out", str(tmp_path / "sel")])
    assert main(["select", "--method", "random", *pool, "--budget", "14", "--out", str(tmp_path / "sel"), "--on_error", "skip"]) == 0  # fmt: skip
    plan = Plan.load(tmp_path / "sel")
    assert plan.skipped["colour"]["by_reason"] == {"corrupt image": 1, "empty answer": 1}
    assert [r["row"] for r in plan.skipped["colour"]["rows"]] == [2, 5] and plan.sizes == {"colour": 8, "count": 6}
    ids = datasets.load_from_disk(str(tmp_path / "colour")).select_columns(["id"])["id"]
    kept_ids = [i for k, i in enumerate(ids) if k not in (2, 5)]
    drawn = [kept_ids[r] for r in plan.resolve()[0]["colour"]]
    assert len(drawn) == 8 and set(drawn) == set(kept_ids)  # every kept row, never a skipped one


def test_the_empty_source_in_score_is_named(disk, tiny_llava_path, capsys):
    code = main(["score", "--model", str(tiny_llava_path), "--sources", str(disk / "a"), str(disk / "empty"),
                 "--targets", str(disk / "b"), "--budget", "4", "--out", str(disk / "dp")])  # fmt: skip
    assert code == 2 and "['empty'] have 0 rows" in capsys.readouterr().err


def test_score_checks_its_arguments_before_the_model(disk, capsys):
    assert main(["score", "--model", "/nonexistent", "--sources", str(disk / "a"), "--targets", str(disk / "b")]) == 2
    assert "--budget is required" in capsys.readouterr().err
    assert main(["score", "--model", "/nonexistent", "--sources", str(disk / "a"), str(disk / "a"), "--targets", str(disk / "b"), "--budget", "3"]) == 2  # fmt: skip
    assert "is given twice" in capsys.readouterr().err


@pytest.mark.slow
def test_score_on_error_skip_reports_the_row_and_never_draws_it(tmp_path, tiny_llava_path):
    bad = corrupt_rows(make_source("colour", 8, seed=1), image_row=3)
    bad.save_to_disk(str(tmp_path / "colour"))
    make_source("count", 8, seed=1).save_to_disk(str(tmp_path / "count"))
    make_source("colour", 4, split="validation", seed=2).save_to_disk(str(tmp_path / "target"))
    args = ["score", "--model", str(tiny_llava_path), "--sources", str(tmp_path / "colour"), str(tmp_path / "count"),
            "--targets", str(tmp_path / "target"), "--budget", "24", "--out", str(tmp_path / "dp"), "--subsample", "8",
            "--n_clusters", "2", "--device", "cpu", "--on_error", "skip"]  # fmt: skip
    assert main(args) == 0
    plan = Plan.load(tmp_path / "dp")
    assert (
        plan.skipped["colour"]["by_reason"] == {"corrupt image": 1} and plan.skipped["colour"]["rows"][0]["row"] == 3
    )
    assert plan.sizes == {"colour": 7, "count": 8}  # the plan draws from the 7 kept rows only
    rows = plan.resolve()[0]["colour"]
    assert len(rows) == plan.counts["colour"] and rows.max() < 7
