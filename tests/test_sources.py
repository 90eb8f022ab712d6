import io

import datasets
import numpy as np
import pytest
from helpers import text_sources
from PIL import Image

from mixwise import DataError, Mixture, Plan, Source, extract_fields, load_source, validate_source
from mixwise.sources import as_pil, load_sources
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


# -- image modes -----------------------------------------------------------------------------------------------------

GRAY = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (4, 1))  # a 4 x 16 ramp of 8-bit levels
ALPHA = np.tile(np.array([255, 128, 0, 64], dtype=np.uint8)[:, None], (1, 16))  # a different alpha per row


def composite(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGB over white: what transformers' convert_to_rgb does before every processor."""
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb * a + 255 * (1 - a))


def mode_cases():
    rgb = np.stack([GRAY, 255 - GRAY, np.full_like(GRAY, 90)], axis=-1)
    gray3 = np.repeat(GRAY[..., None], 3, axis=-1)
    palette = Image.fromarray(rgb).quantize(colors=16)
    palette_rgb = np.asarray(palette.convert("RGB"))
    pa_image = palette.copy().convert("PA")
    pa_image.putalpha(Image.fromarray(ALPHA))
    bits = GRAY >= 128
    return {
        # mode: (image, the RGB values it stands for, tolerance)
        "1": (Image.fromarray(bits), np.repeat((bits * 255)[..., None], 3, axis=-1), 0),
        "L": (Image.fromarray(GRAY), gray3, 0),
        "LA": (Image.fromarray(np.stack([GRAY, ALPHA], -1), mode="LA"), composite(gray3, ALPHA), 1),
        "P": (palette, palette_rgb, 0),
        "PA": (pa_image, composite(palette_rgb, ALPHA), 1),
        "I": (Image.fromarray(GRAY.astype(np.int32) * 257), gray3, 0),  # 16-bit levels in a 32-bit image
        "I (8-bit values)": (Image.fromarray(GRAY.astype(np.int32)), gray3, 0),
        "I;16": (Image.fromarray(GRAY.astype(np.uint16) * 257), gray3, 0),
        "F": (Image.fromarray(GRAY.astype(np.float32) / 255), gray3, 0),
        "F (0-255)": (Image.fromarray(GRAY.astype(np.float32)), gray3, 0),
        "RGBA": (Image.fromarray(np.concatenate([rgb, ALPHA[..., None]], -1), mode="RGBA"), composite(rgb, ALPHA), 1),
        "CMYK": (Image.fromarray(rgb).convert("CMYK"), rgb, 0),
        "YCbCr": (Image.fromarray(rgb).convert("YCbCr"), rgb, 3),
    }


@pytest.mark.parametrize("mode", list(mode_cases()))
def test_every_pil_mode_becomes_the_rgb_it_stands_for(mode):
    image, expected, tolerance = mode_cases()[mode]
    assert image.mode == mode.split(" ")[0]
    out = as_pil(image)
    assert out.mode == "RGB" and out.size == image.size
    diff = np.abs(np.asarray(out).astype(int) - expected.astype(int))
    assert diff.max() <= tolerance, (mode, diff.max())
    # the same from stored bytes (what datasets keeps), for the modes PNG / TIFF can hold
    fmt = "TIFF" if mode.startswith(("F", "I ", "PA", "CMYK", "YCbCr")) or mode == "I" else "PNG"
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    stored = np.asarray(as_pil({"bytes": buf.getvalue(), "path": None})).astype(int)
    assert np.abs(stored - expected.astype(int)).max() <= tolerance, (mode, fmt)


def test_a_plain_convert_saturates_16_bit_images():
    """Why `as_pil` does not just `convert("RGB")`: PIL clips 16-bit values to 255 (the image becomes white)."""
    image = Image.fromarray(np.full((4, 4), 30000, dtype=np.uint16))
    assert np.asarray(image.convert("RGB")).min() == 255
    assert np.asarray(as_pil(image)).max() == round(30000 * 255 / 65535)


# -- loading ---------------------------------------------------------------------------------------------------------


def test_data_files_are_sources(tmp_path):
    ds = make_source("count", 6, seed=2)
    ds.to_parquet(str(tmp_path / "count.parquet"))
    text = text_sources({"math": 5})["math"]
    text.to_json(str(tmp_path / "math.jsonl"))
    (tmp_path / "shards").mkdir()
    text.select(range(3)).to_parquet(str(tmp_path / "shards" / "part-0.parquet"))
    text.select(range(3, 5)).to_parquet(str(tmp_path / "shards" / "part-1.parquet"))

    parquet = load_source(tmp_path / "count.parquet")
    assert parquet.name == "count" and len(parquet) == 6
    assert parquet.dataset.features["images"] == datasets.List(datasets.Image())  # images come back as images
    validate_source(parquet)
    jsonl = load_source(f"m={tmp_path / 'math.jsonl'}")
    assert jsonl.name == "m" and jsonl.dataset["prompt"] == text["prompt"]
    folder = load_source(tmp_path / "shards")
    assert folder.name == "shards" and sorted(folder.dataset["id"]) == sorted(text["id"])


def test_what_is_not_a_source_is_named_with_what_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"'.*notes.txt' is a file of a kind mixwise cannot read; accepted: a save_to_disk"):  # fmt: skip
        load_source(tmp_path / "notes.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="holds neither a save_to_disk dataset nor data files; accepted"):
        load_source(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="does not exist; accepted"):
        load_source(tmp_path / "missing.parquet")


def test_an_empty_saved_dataset_loads(tmp_path):
    ds = make_source("count", 3).select([])
    ds.save_to_disk(str(tmp_path / "none"))
    with pytest.raises(IndexError):  # what datasets itself does with it
        datasets.load_from_disk(str(tmp_path / "none"))
    src = load_source(tmp_path / "none")
    assert len(src) == 0 and src.dataset.features == ds.features and src.fingerprint == ds._fingerprint


def test_the_same_source_twice_is_refused(tmp_path):
    text_sources({"a": 3})["a"].save_to_disk(str(tmp_path / "a"))
    text_sources({"a": 4})["a"].save_to_disk(str(tmp_path / "other" / "a"))
    with pytest.raises(ValueError, match="is given twice"):
        load_sources([str(tmp_path / "a"), str(tmp_path / "." / "a")])
    with pytest.raises(ValueError, match="two pool sources are named 'a'"):
        load_sources([str(tmp_path / "a"), str(tmp_path / "other" / "a")])
    assert [s.name for s in load_sources([str(tmp_path / "a"), f"b={tmp_path / 'other' / 'a'}"])] == ["a", "b"]
