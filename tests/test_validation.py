"""Validation catches what the training stack would reject later (TRL's collator and trainer, the processor, the
model), naming source, row and field — each case checked against the real part that would fail."""

import copy
import io

import datasets
import numpy as np
import pyarrow as pa
import pytest
from helpers import read_json, run_distributed
from PIL import Image
from trl.data_utils import prepare_multimodal_messages
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

import mixwise.validation as validation
from mixwise import DataError, Source, validate_source
from mixwise.sources import from_sharegpt
from mixwise.toy import corrupt_rows, make_source
from mixwise.validation import UNTRUNCATED_TOKEN_LIMIT, TokenCheck, trl_messages

IMAGES = datasets.List(datasets.Image())
MESSAGES = datasets.List(
    {"role": datasets.Value("string"), "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})}
)  # fmt: skip


def png(color=(200, 30, 30), size=(8, 8)) -> Image.Image:
    return Image.new("RGB", size, color)


def turn(role, *parts):
    return {"role": role, "content": [{"type": "image", "text": None} if p is None else {"type": "text", "text": p} for p in parts]}  # fmt: skip


def vision_rows(rows: list[dict]) -> datasets.Dataset:
    """SFT rows `{"images": [...], "messages": [...]}` with the toy world's features."""
    return datasets.Dataset.from_list(rows, features=datasets.Features({"images": IMAGES, "messages": MESSAGES}))


def good_row(question="What colour is it?", answer="red", n_images=1):
    return {"images": [png()] * n_images, "messages": [turn("user", *([None] * n_images), question), turn("assistant", answer)]}  # fmt: skip


def collate(processor, rows, **kwargs):
    return DataCollatorForVisionLanguageModeling(processor, **kwargs)([dict(r) for r in rows])


# -- images vs placeholders ----------------------------------------------------------------------------------------


def test_more_images_than_placeholders_is_named_as_trl_would_refuse_it():
    two_images = {"images": [png(), png()], "messages": [turn("user", None, "Which is larger?"), turn("assistant", "left")]}  # fmt: skip
    no_image = {"images": [], "messages": [turn("user", None, "What is it?"), turn("assistant", "a cat")]}
    ds = vision_rows([good_row(), two_images, good_row(), no_image])
    # what TRL's collator does with those rows, at the first batch holding them
    for k in (1, 3):
        row = ds[k]
        with pytest.raises(ValueError, match="does not match number of image placeholders"):
            prepare_multimodal_messages(row["messages"], images=row["images"])
    with pytest.raises(DataError, match=r"row 1, field 'images': 2 image\(s\) but 1 image placeholder"):
        validate_source(Source("vqa", ds))
    kept, report = validate_source(Source("vqa", ds), on_error="skip")
    assert len(kept) == 2 and [r["row"] for r in report.rows] == [1, 3]
    assert report.by_reason == {"images != image placeholders": 2}


def test_string_content_gets_its_placeholders_inserted_as_trl_does():
    row = {"role": "user", "content": "What is it?"}
    built, placeholders = trl_messages([row, {"role": "assistant", "content": "x"}], 2)
    assert placeholders == 2 and [p["type"] for p in built[0]["content"]] == ["image", "image", "text"]
    trl_built = prepare_multimodal_messages([row, {"role": "assistant", "content": "x"}], images=[png(), png()])
    assert [p["type"] for p in trl_built[0]["content"]] == ["image", "image", "text"]


# -- roles ----------------------------------------------------------------------------------------------------------


def test_a_role_outside_trls_set_is_named_before_training():
    narrator = {"images": [png()], "messages": [turn("user", None, "Go on."), turn("narrator", "It was dark."), turn("assistant", "ok")]}  # fmt: skip
    ds = vision_rows([good_row(), narrator])
    with pytest.raises(ValueError, match="Invalid role in message: narrator"):
        prepare_multimodal_messages(ds[1]["messages"], images=ds[1]["images"])
    with pytest.raises(DataError, match=r"row 1, field 'messages': message 1 has role 'narrator'"):
        validate_source(Source("story", ds))


def test_sharegpt_roles_are_named_as_sharegpt_not_as_an_empty_answer():
    gpt = {"images": [png()], "messages": [turn("human", None, "What is it?"), turn("gpt", "a cat")]}
    ds = vision_rows([gpt])
    with pytest.raises(DataError) as err:
        validate_source(Source("llava", ds))
    assert "ShareGPT" in str(err.value) and "from_sharegpt" in str(err.value) and "empty answer" not in str(err.value)
    assert err.value.row == 0 and err.value.field == "messages"


def test_from_sharegpt_gives_rows_that_validate_and_that_trl_accepts():
    raw = datasets.Dataset.from_dict(
        {
            "id": ["a", "b"],
            "image": [png(), png((0, 0, 255))],
            "conversations": [
                [{"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "red"}],
                [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Colour? <image>"},
                    {"from": "gpt", "value": "blue"},
                ],  # fmt: skip
            ],
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "conversations": datasets.List({"from": datasets.Value("string"), "value": datasets.Value("string")}),
            }
        ),  # fmt: skip
    )
    with pytest.raises(DataError, match="ShareGPT data: convert it with mixwise.sources.from_sharegpt"):
        validate_source(Source("llava", raw))
    ds = from_sharegpt(raw)
    assert set(ds.column_names) == {"id", "images", "messages"}
    first = ds[0]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert [p["type"] for p in first[0]["content"]] == ["image", "text"] and first[0]["content"][1]["text"] == "What colour?"  # fmt: skip
    assert [p["type"] for p in ds[1]["messages"][1]["content"]] == ["text", "image"]
    kept, report = validate_source(Source("llava", ds))
    assert report.skipped == 0
    for row in ds:
        prepare_multimodal_messages(row["messages"], images=row["images"])  # TRL takes them as they are


# -- tokens ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["llava", "qwen2_vl"])
def test_token_counts_equal_the_collators(kind, tiny_llava, tiny_qwen2_vl):
    """The length validation computes (rendered text + each image expanded) is the length TRL's collator gives."""
    processor = (tiny_llava if kind == "llava" else tiny_qwen2_vl)[1]
    rows = [dict(r) for r in make_source("chart", 3, seed=2)] + [good_row("Compare the two.", "the left one", n_images=2)]  # fmt: skip
    ds = vision_rows([{"images": r["images"], "messages": r["messages"]} for r in rows])
    raw = ds.with_format("arrow")[:].to_pylist()
    for exact in (False, True):
        check = TokenCheck(processor, None)
        check.exact = exact
        items = [
            {
                "source": "s",
                "row": k,
                "fmt": "sft",
                "value": raw[k]["messages"],
                "images": raw[k]["images"],
                "sizes": [(im.size[1], im.size[0]) for im in row["images"]],
                "vision": True,
            }  # fmt: skip
            for k, row in enumerate(ds)
        ]
        texts, problems = check.render_all(items)
        assert not problems
        for k, row in enumerate(ds):
            length = collate(processor, [row])["input_ids"].shape[1]
            ids = check.tokenizer([texts[k]], add_special_tokens=False)["input_ids"][0]
            counts = check.image_tokens(items[k]["images"], items[k]["sizes"])
            assert len(ids) + sum(c - 1 for c in counts) == length, (kind, exact, k)


def test_a_huge_question_with_no_max_length_is_refused_before_training(tiny_llava):
    _, processor = tiny_llava
    question = "Describe every detail of the picture, please. " * 2200  # about 100K characters
    ds = vision_rows([good_row(), good_row(question=question)])
    # what the trainer would get: one sequence far past the model's positions (and memory)
    assert collate(processor, [ds[1]])["input_ids"].shape[1] > 20_000
    with pytest.raises(DataError) as err:
        validate_source(Source("long", ds), processing_class=processor)
    assert err.value.row == 1 and err.value.field == "messages"
    assert "max_length=None" in err.value.problem and "model_max_length=2048" in err.value.problem
    # a tokenizer that declares no limit: the default guard applies
    tokenizer = processor.tokenizer
    old = tokenizer.model_max_length
    tokenizer.model_max_length = int(1e30)
    try:
        with pytest.raises(DataError, match=f"UNTRUNCATED_TOKEN_LIMIT={UNTRUNCATED_TOKEN_LIMIT}"):
            validate_source(Source("long", ds), processing_class=processor, cache=False)
    finally:
        tokenizer.model_max_length = old
    # an explicit max_length accepts it (TRL truncates it; its answer is then cut away, which is named)
    with pytest.raises(DataError, match="answer truncated away"):
        validate_source(Source("long", ds), processing_class=processor, max_length=4096)
    kept, report = validate_source(Source("long", ds), processing_class=processor, on_error="skip")
    assert len(kept) == 1 and report.by_reason == {"too many tokens (max_length=None)": 1}


def test_an_answer_truncated_away_is_refused_where_the_trainer_would_train_on_nothing(tiny_llava):
    _, processor = tiny_llava
    long_question = good_row(question="Look closely at every part of this picture and then say which colour it is.")
    ds = vision_rows([good_row(), long_question])
    lengths = [collate(processor, [r])["input_ids"].shape[1] for r in ds]
    max_length = lengths[0]  # the short row fits; the long row's answer is beyond it
    labels = collate(processor, [ds[1]], max_length=max_length, assistant_only_loss=True)["labels"]
    assert bool((labels == -100).all())  # trained at loss 0: the bug
    kept_labels = collate(processor, [ds[0]], max_length=max_length, assistant_only_loss=True)["labels"]
    assert bool((kept_labels != -100).any())
    with pytest.raises(DataError, match=r"row 1, field 'messages': answer truncated away"):
        validate_source(Source("vqa", ds), processing_class=processor, max_length=max_length)
    validate_source(Source("vqa", ds.select([0])), processing_class=processor, max_length=max_length)


def test_truncation_into_image_tokens_is_refused(tiny_llava):
    _, processor = tiny_llava
    ds = vision_rows([good_row()])
    with pytest.raises(ValueError, match="Mismatch in `image` token count"):  # the collator, mid-training
        collate(processor, [ds[0]], max_length=8)
    with pytest.raises(DataError, match=r"row 0, field 'images': truncation to max_length=8 cuts image tokens"):
        validate_source(Source("vqa", ds), processing_class=processor, max_length=8)


def test_an_image_token_written_in_the_text_is_named(tiny_llava):
    _, processor = tiny_llava
    ds = vision_rows([good_row(question=f"{processor.image_token} What colour is it?")])
    with pytest.raises(DataError, match=r"1 image\(s\) but the rendered conversation holds 2 image token"):
        validate_source(Source("vqa", ds), processing_class=processor)


def test_a_template_that_refuses_a_row_is_named(tiny_llama):
    strict = copy.deepcopy(tiny_llama[1])
    strict.chat_template = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}" + strict.chat_template  # fmt: skip
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {
            "messages": [
                {"role": "system", "content": "x"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "yo"},
            ]
        },  # fmt: skip
    ]
    ds = datasets.Dataset.from_list(rows)
    with pytest.raises(DataError, match=r"row 1, field 'messages': the chat template cannot render this row"):
        validate_source(Source("chat", ds), processing_class=strict)


# -- text that is not text -------------------------------------------------------------------------------------------


def invalid_utf8_dataset(tmp_path, bad_row=3, n=6):
    prompts = [f"question {i}".encode() for i in range(n)]
    prompts[bad_row] = b"caf\xe9 \xff"  # Latin-1 bytes, not UTF-8
    binary = pa.array(prompts, type=pa.binary())
    strings = pa.Array.from_buffers(pa.string(), n, binary.buffers())  # an Arrow string column, unvalidated
    table = pa.table({"prompt": strings, "answer": pa.array([str(i) for i in range(n)])})
    ds = datasets.Dataset(datasets.table.InMemoryTable(table))
    ds.save_to_disk(str(tmp_path / "latin1"))
    return datasets.load_from_disk(str(tmp_path / "latin1"))


def test_invalid_utf8_is_named_and_skippable(tmp_path):
    ds = invalid_utf8_dataset(tmp_path)
    with pytest.raises(UnicodeDecodeError):  # what any reader of that row gets, with no source or row
        ds[3]
    with pytest.raises(DataError, match=r"source 'latin1', row 3, field 'prompt': invalid UTF-8"):
        validate_source(Source("latin1", ds))
    kept, report = validate_source(Source("latin1", ds), on_error="skip")
    assert report.by_reason == {"invalid UTF-8": 1} and report.rows[0]["row"] == 3
    assert [r["answer"] for r in kept.dataset] == ["0", "1", "2", "4", "5"]  # every kept row reads


def test_text_stored_as_binary_is_decoded_and_bad_bytes_are_named():
    rows = {"prompt": [b"2+2?", b"3+3?", b"\xff?"], "answer": [b"4", b"6", b"?"]}
    ds = datasets.Dataset.from_dict(rows, features=datasets.Features({"prompt": datasets.Value("binary"), "answer": datasets.Value("binary")}))  # fmt: skip
    with pytest.raises(DataError, match=r"row 0, field 'prompt': text is stored as bytes"):
        from mixwise import extract_fields

        extract_fields(ds[0], "math", 0)
    with pytest.raises(DataError, match=r"source 'math', row 2, field 'prompt': binary text that is not valid UTF-8"):
        validate_source(Source("math", ds))
    kept, report = validate_source(Source("math", ds), on_error="skip")
    assert kept.dataset.features["prompt"] == datasets.Value("string")
    assert kept.dataset[:] == {"prompt": ["2+2?", "3+3?"], "answer": ["4", "6"]}
    assert report.converted == {"binary text -> string": 3} and report.skipped == 1


def test_binary_text_inside_messages_is_decoded():
    features = datasets.Features({"messages": datasets.List({"role": datasets.Value("binary"), "content": datasets.Value("binary")})})  # fmt: skip
    ds = datasets.Dataset.from_dict(
        {"messages": [[{"role": b"user", "content": b"hi"}, {"role": b"assistant", "content": b"hello"}]]}, features=features
    )  # fmt: skip
    kept, report = validate_source(Source("chat", ds))
    assert kept.dataset[0]["messages"] == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


# -- images of more than 8 bits ---------------------------------------------------------------------------------------


def sixteen_bit_png(level: int) -> dict:
    values = np.full((8, 8), level, dtype=np.uint16)
    values[0, 0] = 0
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    return {"bytes": buf.getvalue(), "path": None}


def test_16_bit_images_reach_the_processor_as_8_bit_not_white(tiny_llava):
    _, processor = tiny_llava
    row = good_row()
    row["images"] = [sixteen_bit_png(32896)]  # mid-grey: 32896 / 257 = 128
    ds = vision_rows([good_row(), row])
    raw = ds[1]["images"][0]
    reference = Image.new("RGB", (8, 8), (128, 128, 128))
    reference.putpixel((0, 0), (0, 0, 0))
    as_given = processor.image_processor(raw, return_tensors="np")["pixel_values"]
    wanted = processor.image_processor(reference, return_tensors="np")["pixel_values"]
    saturated = Image.new("RGB", (8, 8), "white")
    saturated.putpixel((0, 0), (0, 0, 0))
    white = processor.image_processor(saturated, return_tensors="np")["pixel_values"]
    assert np.allclose(as_given, white, atol=0.05)  # the bug: the processor saturates it
    kept, report = validate_source(Source("scans", ds))
    assert report.converted == {"16-bit or float image -> 8-bit RGB": 1} and len(kept) == 2
    image = kept.dataset[1]["images"][0]
    assert image.mode == "RGB" and np.array_equal(np.asarray(image), np.asarray(reference))
    got = processor.image_processor(image, return_tensors="np")["pixel_values"]
    assert np.allclose(got, wanted)
    assert np.array_equal(np.asarray(kept.dataset[0]["images"][0]), np.asarray(ds[0]["images"][0]))


# -- scale: processes, cache ----------------------------------------------------------------------------------------


def planted(n=700, bad=(5, 333, 699)):
    prompts = [f"question {i}" for i in range(n)]
    answers = [str(i) for i in range(n)]
    for b in bad:
        answers[b] = " "
    return datasets.Dataset.from_dict({"prompt": prompts, "answer": answers})


def test_processes_give_the_same_result_as_one(tmp_path):
    ds = planted()
    one, r1 = validate_source(Source("p", ds), on_error="skip", num_proc=1, cache=False)
    two, r2 = validate_source(Source("p", ds), on_error="skip", num_proc=2, cache=False)
    assert r1.rows == r2.rows and [r["row"] for r in r1.rows] == [5, 333, 699]
    assert one.dataset["prompt"] == two.dataset["prompt"] and one.fingerprint == two.fingerprint
    for num_proc in (1, 2):  # the first bad row, whatever the split across processes
        with pytest.raises(DataError, match="row 5, field 'answer'"):
            validate_source(Source("p", ds), num_proc=num_proc, cache=False)


def test_a_second_run_reads_the_cached_result(tmp_path, monkeypatch):
    ds = corrupt_rows(make_source("colour", 20, seed=4), image_row=6)
    first, report = validate_source(Source("colour", ds), on_error="skip", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 1

    def no_scan(*args, **kwargs):
        raise AssertionError("rows were read again")

    monkeypatch.setattr(validation, "run_scan", no_scan)
    again, report2 = validate_source(Source("colour", ds), on_error="skip", cache_dir=tmp_path)
    assert report2.to_dict() == report.to_dict() and again.fingerprint == first.fingerprint
    with pytest.raises(DataError, match="row 6, field 'images'"):  # raise mode from the same cached scan
        validate_source(Source("colour", ds), cache_dir=tmp_path)
    # other settings or other data are scanned anew
    with pytest.raises(AssertionError, match="read again"):
        validate_source(Source("colour", ds), on_error="skip", check_images=False, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="read again"):
        validate_source(Source("colour", ds.select(range(10))), on_error="skip", cache_dir=tmp_path)


def test_the_default_cache_is_under_mixwise_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MIXWISE_CACHE", str(tmp_path / "not-yet"))
    validate_source(Source("count", make_source("count", 4)))
    assert len(list((tmp_path / "not-yet" / "validation").glob("*.json"))) == 1


def test_one_rank_validates_and_every_rank_gets_the_result(tmp_path):
    run_distributed("validate_ranks.py", [str(tmp_path)], nproc=2)
    r0, r1 = (read_json(tmp_path / f"rank{r}.json") for r in (0, 1))
    assert r0["scans"] == ["colour", "colour", "colour", "count"] and r1["scans"] == []
    for key in ("report", "kept", "raised", "mixture", "fingerprint"):
        assert r0[key] == r1[key], key
    assert r0["report"]["by_reason"] == {"corrupt image": 1, "empty answer": 1}
    assert r0["raised"].startswith("source 'colour', row 4, field 'images'")
