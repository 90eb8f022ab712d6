"""Tests for mixwise.toy, the embedded toy multimodal world."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from collections import defaultdict

import datasets
import numpy as np
import PIL.Image
import pytest

from mixwise import toy

N = 24


def _fingerprint(ds: datasets.Dataset) -> str:
    """sha256 over all text and stored image bytes of ``ds``."""
    h = hashlib.sha256()
    for images in toy.image_bytes(ds):
        for blob in images:
            h.update(blob)
    text_columns = [c for c in ds.column_names if c != "images"]
    h.update(repr(ds.select_columns(text_columns).to_list()).encode())
    return h.hexdigest()


def _answers(ds: datasets.Dataset) -> list[str]:
    if "answer" in ds.column_names:
        return list(ds["answer"])
    return [messages[-1]["content"][0]["text"] for messages in ds["messages"]]


def _questions(ds: datasets.Dataset) -> list[str]:
    turns = ds["messages"] if "messages" in ds.column_names else ds["prompt"]
    return [t[0]["content"][1]["text"] for t in turns]


def test_families_and_answer_spaces():
    assert toy.FAMILIES[:6] == ("count", "colour", "spatial", "ocr", "chart", "digits")
    assert toy.answer_space("count") == ["1", "2", "3", "4", "5"]
    assert toy.answer_space("spatial") == ["left", "right", "up", "down"]
    assert toy.answer_space("ocr") == [str(d) for d in range(10)]
    assert toy.answer_space("digits") == [str(d) for d in range(10)]
    assert 6 <= len(toy.answer_space("colour")) <= 8
    for family in toy.FAMILIES:
        space = toy.answer_space(family)
        assert space and len(space) == len(set(space)) and len(space) <= 20
        assert all(a and " " not in a for a in space), "answers are single short tokens"
        space.append("mutated")  # a copy: mutating it must not leak into the module
        assert "mutated" not in toy.answer_space(family)


@pytest.mark.parametrize("family", toy.FAMILIES)
def test_rows_sft_format_and_answers_in_space(family):
    ds = toy.make_source(family, N, split="test", seed=3)
    assert len(ds) == N
    assert ds.column_names == ["id", "source", "images", "messages"]
    assert ds.features == toy.features("sft")
    space = set(toy.answer_space(family))
    corpus = set(toy.corpus())
    for i, row in enumerate(ds):
        assert row["id"] == f"{family}/test/{i}"
        assert row["source"] == family
        assert len(row["images"]) == 1
        image = row["images"][0]
        assert isinstance(image, PIL.Image.Image) and image.mode == "RGB" and image.size == (32, 32)
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert user["content"][0] == {"type": "image", "text": None}
        assert user["content"][1]["type"] == "text" and user["content"][1]["text"].strip()
        assert assistant["content"] == [{"type": "text", "text": assistant["content"][0]["text"]}]
        answer = assistant["content"][0]["text"]
        assert answer in space
        assert answer in corpus and user["content"][1]["text"] in corpus


@pytest.mark.parametrize("family", toy.FAMILIES)
def test_rows_rl_format_matches_sft(family):
    rl = toy.make_source(family, N, seed=1, fmt="rl", source="custom")
    sft = toy.make_source(family, N, seed=1, fmt="sft")
    assert rl.column_names == ["id", "source", "images", "prompt", "answer"]
    assert rl.features == toy.features("rl")
    assert set(rl["source"]) == {"custom"}
    row = rl[0]
    assert [t["role"] for t in row["prompt"]] == ["user"]
    assert row["prompt"][0]["content"][0] == {"type": "image", "text": None}
    assert isinstance(row["answer"], str) and row["answer"] in toy.answer_space(family)
    # the same rows, only laid out differently
    assert _answers(rl) == _answers(sft)
    assert _questions(rl) == _questions(sft)
    assert toy.image_bytes(rl) == toy.image_bytes(sft)


def test_determinism_and_seed_sensitivity():
    for family in toy.FAMILIES:
        a = toy.make_source(family, N, seed=7)
        b = toy.make_source(family, N, seed=7)
        c = toy.make_source(family, N, seed=8)
        assert _fingerprint(a) == _fingerprint(b), family
        assert toy.image_bytes(a) != toy.image_bytes(c), family
        # a smaller n is a prefix of a larger one
        assert toy.image_bytes(toy.make_source(family, 5, seed=7)) == toy.image_bytes(a)[:5]
    # splits are different streams
    assert toy.image_bytes(toy.make_source("count", N, "train")) != toy.image_bytes(
        toy.make_source("count", N, "test")
    )


def test_determinism_across_processes():
    """Same arguments give byte-identical rows in a fresh process with another hash salt (hash() is not used)."""
    script = (
        "import hashlib, sys\n"
        "import mixwise.toy as toy\n"
        "for f in toy.FAMILIES:\n"
        "    ds = toy.make_source(f, 6, split='test', seed=11, fmt='rl')\n"
        "    h = hashlib.sha256(repr([ds['answer'], [p[0]['content'][1]['text'] for p in ds['prompt']]]).encode())\n"
        "    for imgs in toy.image_bytes(ds):\n"
        "        h.update(imgs[0])\n"
        "    print(f, h.hexdigest())\n"
    )
    salt = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": salt}
    proc = subprocess.run(
        [sys.executable, "-c", script, toy.__file__], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    local = []
    for f in toy.FAMILIES:
        ds = toy.make_source(f, 6, split="test", seed=11, fmt="rl")
        h = hashlib.sha256(repr([ds["answer"], _questions(ds)]).encode())
        for imgs in toy.image_bytes(ds):
            h.update(imgs[0])
        local.append(f"{f} {h.hexdigest()}")
    assert proc.stdout.splitlines() == local


def test_digit_splits_are_disjoint_and_rows_use_their_own_pool():
    train, val, test = (set(toy.digit_indices(s).tolist()) for s in ("train", "validation", "test"))
    assert not train & test and not train & val and not val & test
    assert len(train | val | test) == 1797  # the whole of sklearn's load_digits
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for split, pool in (("train", train), ("test", test)):
        order = toy._digit_order(0, split)
        assert set(order.tolist()) == pool
        ds = toy.make_source("digits", 40, split=split, fmt="rl")
        # each row's answer is the label of the sklearn image it was drawn from, which lies in the split's pool
        assert ds["answer"] == [str(bunch.target[order[i]]) for i in range(40)]
    # the first len(pool) rows never repeat an sklearn image
    assert len(set(toy._digit_order(0, "test").tolist())) == len(test)


def test_digit_images_come_from_sklearn():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    ds = toy.make_source("digits", 3, split="test", seed=2, fmt="rl")
    order = toy._digit_order(2, "test")
    for i, row in enumerate(ds):
        ink = 255 - np.asarray(row["images"][0].convert("L"), dtype=np.float64)
        assert ink.max() > 150, "a dark digit on a light background"
        reference = bunch.images[order[i]]
        # downsample the drawn ink to the 8x8 grid (over its bounding box) and compare with the sklearn image
        ys, xs = np.nonzero(ink > 60)
        crop = PIL.Image.fromarray(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.uint8))
        ref_ys, ref_xs = np.nonzero(reference > 60 / 255 * 16)
        ref = reference[ref_ys.min() : ref_ys.max() + 1, ref_xs.min() : ref_xs.max() + 1]
        small = np.asarray(crop.resize(ref.shape[::-1], PIL.Image.Resampling.BOX), dtype=np.float64)
        assert np.corrcoef(small.ravel(), ref.ravel())[0, 1] > 0.8


@pytest.mark.parametrize("family", ["count", "colour", "shape", "ocr", "chart", "digits"])
def test_answer_is_a_function_of_the_image(family):
    ds = toy.make_source(family, 400, seed=5, fmt="rl")
    seen: dict[bytes, set[str]] = defaultdict(set)
    for images, answer in zip(toy.image_bytes(ds), ds["answer"]):
        seen[images[0]].add(answer)
    assert all(len(answers) == 1 for answers in seen.values())
    assert len(seen) > 300, "images are varied"
    assert set(ds["answer"]) == set(toy.answer_space(family)), "every answer occurs in 400 rows"


def test_spatial_answer_is_the_arrow_direction():
    """The arrow's head (a wide triangle) is on the side it points to; its shaft is narrow."""
    ds = toy.make_source("spatial", 80, seed=4, fmt="rl", image_size=64)
    for row in ds:
        pixels = np.asarray(row["images"][0], dtype=np.int64)
        ink = np.abs(pixels - pixels[0, 0]).sum(axis=2) > 90
        ys, xs = np.nonzero(ink)
        horizontal = row["answer"] in ("left", "right")
        along, across = (xs, ys) if horizontal else (ys, xs)
        lo, hi = along.min(), along.max()

        def width(at, lo=lo, hi=hi, along=along):  # the arrow's extent across its axis, at a fraction of its length
            line = round(lo + at * (hi - lo))
            return np.count_nonzero(along == line)

        head_at_high = width(0.7) > width(0.3)  # the head is on the high-coordinate side (right / down)
        assert head_at_high == (row["answer"] in ("right", "down")), row["id"]
    assert set(ds["answer"]) == set(toy.RELATIONS)


def test_objects_sit_inside_their_cells():
    """What a question asks about lies inside one cell of the 4 x 4 patch grid (digits, arrows, counted shapes)."""
    for family in ("spatial", "ocr", "digits", "count"):
        ds = toy.make_source(family, 30, seed=8, fmt="rl")
        for row in ds:
            pixels = np.asarray(row["images"][0], dtype=np.int64)
            ink = np.abs(pixels - pixels[0, 0]).sum(axis=2) > 120
            cells = {(y // 8, x // 8) for y, x in zip(*np.nonzero(ink))}
            expected = int(row["answer"]) if family == "count" else 1
            assert len(cells) == expected, (family, row["id"], sorted(cells))


def test_count_answer_matches_connected_components():
    from scipy import ndimage

    ds = toy.make_source("count", 60, seed=9, fmt="rl")
    for row in ds:
        pixels = np.asarray(row["images"][0], dtype=np.int64)
        background = pixels[0, 0]
        ink = np.abs(pixels - background).sum(axis=2) > 90
        _, components = ndimage.label(ink)
        assert components == int(row["answer"]), row["id"]


def test_colour_answer_is_the_shape_colour():
    ds = toy.make_source("colour", 80, seed=6, fmt="rl")
    names, palette = list(toy.COLOURS), np.array(list(toy.COLOURS.values()))
    for row in ds:
        pixels = np.asarray(row["images"][0], dtype=np.int64).reshape(-1, 1, 3)
        distance = np.abs(pixels - palette[None]).sum(axis=2)
        nearest = distance.argmin(axis=1)[distance.min(axis=1) < 30]
        assert names[np.bincount(nearest, minlength=len(names)).argmax()] == row["answer"], row["id"]


def test_chart_tallest_bar_has_the_answer_colour():
    ds = toy.make_source("chart", 40, seed=2, fmt="rl")
    for row in ds:
        pixels = np.asarray(row["images"][0], dtype=np.int64)
        target = np.array(toy.COLOURS[row["answer"]])
        hits = np.nonzero(np.abs(pixels - target).sum(axis=2) < 40)
        assert len(hits[0]), row["id"]
        top_of_answer = hits[0].min()
        # no other palette colour reaches as high
        for name, colour in toy.COLOURS.items():
            if name == row["answer"]:
                continue
            other = np.nonzero(np.abs(pixels - np.array(colour)).sum(axis=2) < 40)[0]
            if len(other):
                assert other.min() > top_of_answer + 2, (row["id"], name)


def test_ocr_renders_digits_offline():
    ds = toy.make_source("ocr", 40, seed=0, fmt="rl")
    masks = {}
    for row in ds:
        gray = np.asarray(row["images"][0].convert("L"), dtype=np.int64)
        ink = gray < gray[0, 0] - 60
        assert ink.sum() > 8, "the digit is visible"
        ys, xs = np.nonzero(ink)
        masks.setdefault(row["answer"], set()).add(ink[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].tobytes())
    # the same digit renders to the same glyph wherever it is drawn, different digits to different glyphs
    assert all(len(m) == 1 for m in masks.values()) and len(set().union(*masks.values())) == len(masks)


def test_sizes_and_image_size():
    assert len(toy.make_source("chart", 0)) == 0
    assert toy.make_source("chart", 0).features == toy.features("sft")
    ds = toy.make_source("spatial", 3, image_size=48)
    assert all(row["images"][0].size == (48, 48) for row in ds)
    assert toy.make_source("ocr", 2, image_size=16)[1]["images"][0].size == (16, 16)
    world = toy.make_world(n_train=7, n_test=3, families=["count", "digits"], fmt="rl")
    assert set(world) == {"count", "digits"}
    for dd in world.values():
        assert isinstance(dd, datasets.DatasetDict)
        assert set(dd) == {"train", "test"}
        assert len(dd["train"]) == 7 and len(dd["test"]) == 3
        assert dd["train"][0]["id"].endswith("/train/0") and dd["test"][0]["id"].endswith("/test/0")
    assert set(toy.make_world(1, 1)) == set(toy.FAMILIES)


def test_errors():
    with pytest.raises(ValueError, match="'nope'") as info:
        toy.make_source("nope", 3)
    assert "count" in str(info.value) and "digits" in str(info.value)
    with pytest.raises(ValueError, match="'nope'"):
        toy.answer_space("nope")
    with pytest.raises(ValueError, match="'nope'"):
        toy.make_world(1, 1, families=["count", "nope"])
    with pytest.raises(ValueError, match="fmt|format"):
        toy.make_source("count", 3, fmt="dpo")
    with pytest.raises(ValueError, match="n must"):
        toy.make_source("count", -1)
    with pytest.raises(ValueError, match="n must"):
        toy.make_source("count", 2.0)
    with pytest.raises(ValueError, match="n must"):
        toy.make_source("count", True)
    with pytest.raises(ValueError, match="split"):
        toy.make_source("digits", 3, split="dev")
    with pytest.raises(ValueError, match="image_size"):
        toy.make_source("count", 3, image_size=4)


def test_save_world_round_trip(tmp_path):
    paths = toy.save_world(tmp_path / "world", n_train=6, n_test=4, families=["ocr", "chart"], fmt="sft")
    assert set(paths) == {"ocr", "chart"}
    for family, path in paths.items():
        assert path == tmp_path / "world" / family and path.is_dir()
        loaded = datasets.load_from_disk(str(path))
        assert isinstance(loaded, datasets.DatasetDict)
        fresh = toy.make_source(family, 6, "train")
        assert loaded["train"].features == fresh.features
        assert _fingerprint(loaded["train"]) == _fingerprint(fresh)
        assert len(loaded["test"]) == 4
        assert isinstance(loaded["test"][0]["images"][0], PIL.Image.Image)


@pytest.mark.parametrize("fmt", toy.FORMATS)
def test_corrupt_rows(fmt, tmp_path):
    ds = toy.make_source("colour", 8, fmt=fmt)
    bad = toy.corrupt_rows(ds, image_row=2, empty_answer_row=5)
    assert len(bad) == len(ds) and bad.features == ds.features and bad.column_names == ds.column_names
    # the corrupted image is stored but cannot be decoded
    assert toy.image_bytes(bad)[2] == [toy.CORRUPT_IMAGE_BYTES]
    with pytest.raises(PIL.UnidentifiedImageError):
        bad[2]
    with pytest.raises(OSError):
        PIL.Image.open(io.BytesIO(toy.image_bytes(bad)[2][0]))
    # the empty answer
    assert _answers(bad)[5] == ""
    assert [a for i, a in enumerate(_answers(bad)) if i != 5] == [a for i, a in enumerate(_answers(ds)) if i != 5]
    # everything else is untouched, and the input is not modified
    for i in (0, 1, 3, 4, 6, 7):
        assert toy.image_bytes(bad)[i] == toy.image_bytes(ds)[i]
    assert isinstance(bad[5]["images"][0], PIL.Image.Image)
    assert _answers(ds)[5] != "" and isinstance(ds[2]["images"][0], PIL.Image.Image)
    # survives a save/load round trip
    bad.save_to_disk(str(tmp_path / "bad"))
    reloaded = datasets.load_from_disk(str(tmp_path / "bad"))
    with pytest.raises(PIL.UnidentifiedImageError):
        reloaded[2]
    assert _answers(reloaded)[5] == ""


def test_corrupt_rows_options():
    ds = toy.make_source("count", 6, fmt="sft").select([5, 4, 3, 2, 1, 0])
    only_answer = toy.corrupt_rows(ds, empty_answer_row=-1)
    assert _answers(only_answer)[-1] == "" and only_answer[-1]["id"] == "count/train/0"
    assert isinstance(only_answer[0]["images"][0], PIL.Image.Image)
    only_image = toy.corrupt_rows(ds, image_row=0)
    assert only_image["id"] == ds["id"] and _answers(only_image) == _answers(ds)
    with pytest.raises(PIL.UnidentifiedImageError):
        only_image[0]
    assert _fingerprint(toy.corrupt_rows(ds)) == _fingerprint(ds)
    with pytest.raises(IndexError):
        toy.corrupt_rows(ds, image_row=6)


def test_corpus_covers_everything():
    corpus = toy.corpus()
    assert corpus == sorted(set(corpus))
    for family in toy.FAMILIES:
        assert set(toy.answer_space(family)) <= set(corpus)
        ds = toy.make_source(family, 30, seed=12, fmt="rl")
        assert set(_questions(ds)) <= set(corpus)
        assert len(set(_questions(ds))) > 1, "questions have a few phrasings"


def test_transfer_structure_is_the_jaccard_overlap_of_the_skills():
    families, k = toy.transfer_structure()
    assert families == list(toy.FAMILIES) and set(toy.SKILLS) == set(toy.FAMILIES)
    np.testing.assert_allclose(np.diag(k), 1.0)
    np.testing.assert_allclose(k, k.T)
    at = {(s, t): k[families.index(s), families.index(t)] for s in families for t in families}
    assert at["colour", "chart"] == 0.5  # {colour names} vs {colour names, comparing sizes}
    assert at["ocr", "digits"] == pytest.approx(2 / 3)  # {numerals, glyphs} vs {numerals, glyphs, handwriting}
    assert at["count", "ocr"] == pytest.approx(1 / 3) and at["shape", "spatial"] == 0.5
    assert at["colour", "count"] == 0.0 and at["shape", "digits"] == 0.0
    sub, k2 = toy.transfer_structure(["digits", "ocr"])
    assert sub == ["digits", "ocr"] and k2[0, 1] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="'nope'"):
        toy.transfer_structure(["nope"])


@pytest.mark.parametrize("fmt", toy.FORMATS)
def test_unrelated_source(fmt):
    ds = toy.make_unrelated(60, seed=3, fmt=fmt)
    assert ds.features == toy.features(fmt) and set(ds["source"]) == {"unrelated"}
    assert ds[0]["id"] == "unrelated/train/0"
    answers = _answers(ds)
    assert set(answers) == set(toy.UNRELATED_ANSWERS)
    assert not set(answers) & {a for f in toy.FAMILIES for a in toy.answer_space(f)}
    assert set(_questions(ds)) <= set(toy.corpus()) and set(answers) <= set(toy.corpus())
    assert toy.image_bytes(toy.make_unrelated(5, seed=3, fmt=fmt)) == toy.image_bytes(ds)[:5]
    assert toy.image_bytes(toy.make_unrelated(5, seed=4, fmt=fmt)) != toy.image_bytes(ds)[:5]


@pytest.mark.parametrize("fmt", toy.FORMATS)
def test_mislabel_changes_exactly_the_returned_rows(fmt):
    ds = toy.make_source("shape", 40, seed=2, fmt=fmt)
    bad, changed = toy.mislabel(ds, "shape", 0.25, seed=7, source="shape_noisy")
    assert len(changed) == 10 and changed == sorted(changed)
    before, after = _answers(ds), _answers(bad)
    assert [i for i in range(40) if before[i] != after[i]] == changed
    assert all(a in toy.answer_space("shape") for a in after)
    assert toy.image_bytes(bad) == toy.image_bytes(ds) and _questions(bad) == _questions(ds)
    assert bad["id"] == ds["id"] and set(bad["source"]) == {"shape_noisy"} and bad.features == ds.features
    assert toy.mislabel(ds, "shape", 0.25, seed=7)[1] == changed  # deterministic
    everything, all_rows = toy.mislabel(ds, "shape", 1.0)
    assert all_rows == list(range(40)) and all(a != b for a, b in zip(_answers(everything), before))
    with pytest.raises(ValueError, match="answer space"):
        toy.mislabel(ds, "colour", 0.5)
    with pytest.raises(ValueError, match="fraction"):
        toy.mislabel(ds, "shape", 1.5)


def test_duplicate_repeats_rows_exactly():
    ds = toy.make_source("spatial", 3, seed=1)
    dup = toy.duplicate(ds, 4, source="dups")
    assert len(dup) == 12 and set(dup["source"]) == {"dups"}
    assert dup["id"][:5] == ["spatial/train/0#0", "spatial/train/0#1", "spatial/train/0#2", "spatial/train/0#3",
                             "spatial/train/1#0"]  # fmt: skip
    assert len(set(dup["id"])) == 12
    blobs = toy.image_bytes(dup)
    assert all(blobs[k] == toy.image_bytes(ds)[k // 4] for k in range(12))
    assert _answers(dup) == [a for a in _answers(ds) for _ in range(4)]
    with pytest.raises(ValueError, match="copies"):
        toy.duplicate(ds, 0)
