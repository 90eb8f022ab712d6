import datasets
import pytest
from helpers import text_sources

from mixwise import DataError, Mixture, Plan, Source, extract_fields, validate_source
from mixwise.toy import corrupt_rows, make_source


@pytest.fixture(scope="module")
def bad_colour():
    ds = make_source("colour", 12, seed=3)
    return corrupt_rows(ds, image_row=4, empty_answer_row=7)


def test_fields_from_sft_and_rl_rows():
    sft = make_source("count", 1)[0]
    rl = make_source("count", 1, fmt="rl")[0]
    f_sft, f_rl = extract_fields(sft), extract_fields(rl)
    assert f_sft.question == f_rl.question and "shapes" in f_sft.question
    assert f_sft.answer == f_rl.answer and f_sft.answer.isdigit()
    assert len(f_sft.images) == len(f_rl.images) == 1
    text = extract_fields({"prompt": "2+2?", "solution": "4"})
    assert (text.question, text.answer, text.images) == ("2+2?", "4", [])


@pytest.mark.parametrize(
    "row, field, problem",
    [
        ({"prompt": "q"}, "answer", "no reference answer"),
        ({"text": "x"}, "messages", "neither"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "messages", "empty answer"),
        ({"prompt": "q", "answer": "  "}, "answer", "empty answer"),
        ({"prompt": "", "answer": "a"}, "prompt", "no user text"),
    ],
)
def test_field_errors_name_source_row_field(row, field, problem):
    with pytest.raises(DataError) as err:
        extract_fields(row, source="src", index=12)
    assert err.value.field == field
    assert str(err.value).startswith(f"source 'src', row 12, field '{field}'")
    assert problem in str(err.value)


def test_corrupt_image_and_empty_answer_raise_with_source_row_field(bad_colour):
    with pytest.raises(DataError, match=r"source 'colour', row 4, field 'images': unreadable or corrupt image"):
        validate_source(Source("colour", bad_colour))
    # with the image row fixed, the empty answer is the next error
    fixed = corrupt_rows(make_source("colour", 12, seed=3), empty_answer_row=7)
    with pytest.raises(DataError, match=r"source 'colour', row 7, field 'messages': empty answer"):
        validate_source(Source("colour", fixed))


def test_skip_counts_bad_rows_and_reports_them_in_the_manifest(bad_colour, tmp_path):
    source, report = validate_source(Source("colour", bad_colour), on_error="skip")
    assert len(source) == 10 and report.skipped == 2
    assert report.by_reason == {"corrupt image": 1, "empty answer": 1}
    assert [r["row"] for r in report.rows] == [4, 7]

    good = make_source("count", 8, seed=3)
    mixture = Mixture({"colour": bad_colour, "count": good}, budget=16, validate="skip")
    assert mixture.sizes == {"colour": 10, "count": 8}
    plan = mixture.plan
    assert plan.skipped["colour"]["skipped"] == 2 and "count" not in plan.skipped
    plan.save(tmp_path)
    assert Plan.load(tmp_path).skipped["colour"]["by_reason"] == {"corrupt image": 1, "empty answer": 1}
    # the default is to fail fast
    with pytest.raises(DataError, match="source 'colour', row 4"):
        Mixture({"colour": bad_colour, "count": good}, budget=16)


def test_missing_columns_named():
    ds = datasets.Dataset.from_dict({"question": ["q"], "images": [[]]})
    with pytest.raises(DataError, match=r"source 'qa'.*field 'messages'.*columns are \['images', 'question'\]"):
        validate_source(Source("qa", ds))


def test_source_checks():
    with pytest.raises(ValueError, match="unique"):
        Mixture([Source("a", text_sources({"a": 2})["a"]), Source("a", text_sources({"a": 2})["a"])], budget=2)
    with pytest.raises(TypeError, match="DatasetDict"):
        Source("a", datasets.DatasetDict({"train": text_sources({"a": 2})["a"]}))
