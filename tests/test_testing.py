"""Tests for the offline model zoo, :mod:`mixwise.testing`."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from mixwise import testing
from mixwise.testing import (
    ZOO_KINDS,
    build_tiny_llama,
    build_tiny_llava,
    build_tiny_qwen2_vl,
    build_tokenizer,
    save_tiny_model,
)

BUILDERS = {"llava": build_tiny_llava, "qwen2_vl": build_tiny_qwen2_vl, "llama": build_tiny_llama}

TOY_WORDS = (
    "how many circle square triangle red green blue yellow purple orange black white gray left right above below "
    "What is the colour of shape text say in image bar chart tallest which value digit written Answer with a single "
    "word number"
).split()


def _image(width: int = 40, height: int = 30, colour: tuple[int, int, int] = (255, 0, 0)) -> Image.Image:
    image = Image.new("RGB", (width, height), (255, 255, 255))
    image.paste(colour, (width // 4, height // 4, width // 2, height // 2))
    return image


def _conversation(question: str = "How many circles?", answer: str = "3", image=None) -> list[dict]:
    image_part = {"type": "image", "text": None} if image is None else {"type": "image", "image": image}
    return [
        {"role": "user", "content": [image_part, {"type": "text", "text": question, "image": None}]},
        {"role": "assistant", "content": [{"type": "text", "text": answer}]},
    ]


def _state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def test_tokenizer_is_deterministic_and_small():
    first = testing._trained_tokenizer_json.__wrapped__((), 1024)  # bypass the in-process cache: train twice
    second = testing._trained_tokenizer_json.__wrapped__((), 1024)
    assert first == second
    assert build_tokenizer().get_vocab() == build_tokenizer().get_vocab()
    assert len(build_tokenizer()) <= 1024
    assert len(build_tokenizer(vocab_size=300)) <= 300


def test_tokenizer_calls_return_independent_objects():
    a = build_tokenizer()
    a.chat_template = "changed"
    assert build_tokenizer().chat_template != "changed"


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🤖🎨 and ZWJ 👩‍🔬",
        "tabs\tand\nnewlines\r\n",
        "\x00\x01 control",
        "Ωμέγα ∑ ∫ √2",
    ],
)
def test_tokenizer_encodes_any_text_without_unk(text):
    tokenizer = build_tokenizer()
    assert tokenizer.unk_token is None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert ids and all(0 <= i < len(tokenizer) for i in ids)
    assert tokenizer.decode(ids) == text


def test_tokenizer_special_and_toy_tokens():
    tokenizer = build_tokenizer()
    assert (tokenizer.pad_token, tokenizer.bos_token, tokenizer.eos_token) == ("<pad>", "<s>", "<|end|>")
    for token in testing.SPECIAL_TOKENS:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.pad_token_id == 0
    # the built-in corpus makes every toy-world word a single token
    for word in TOY_WORDS:
        assert 1 in (len(tokenizer.tokenize(" " + word)), len(tokenizer.tokenize(word))), word
    for symbol in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        assert len(tokenizer.tokenize(" " + symbol)) == 1, symbol


def test_tokenizer_extra_corpus_adds_words():
    base = build_tokenizer()
    extended = build_tokenizer(extra_corpus=["zebra quokka"] * 5)
    assert len(base.tokenize(" quokka")) > 1
    assert extended.tokenize(" quokka") == ["Ġquokka"]


# ---------------------------------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ZOO_KINDS)
def test_same_seed_same_weights_different_seed_different_weights(kind):
    rng_before = torch.get_rng_state()
    a, _ = BUILDERS[kind](seed=3)
    b, _ = BUILDERS[kind](seed=3)
    c, _ = BUILDERS[kind](seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before), "building a model must not touch the global RNG"
    assert _state_dicts_equal(a, b)
    assert not _state_dicts_equal(a, c)
    assert sum(p.numel() for p in a.parameters()) < 500_000
    assert a.config._name_or_path.startswith("mixwise-tiny-")


def test_zoo_kinds_and_unknown_kind(tmp_path):
    assert ZOO_KINDS == ("llava", "qwen2_vl", "llama")
    with pytest.raises(ValueError, match="unknown zoo kind"):
        save_tiny_model("gpt5", tmp_path)


# ---------------------------------------------------------------------------------------------------------------------
# Chat template and assistant masks
# ---------------------------------------------------------------------------------------------------------------------


def test_chat_template_renders_images_strings_system_and_generation_prompt(tiny_llava, tiny_qwen2_vl, tiny_llama):
    messages = [{"role": "system", "content": "Be brief."}, *_conversation()]
    expected = "<|system|>\nBe brief.<|end|>\n<|user|>\n{img}How many circles?<|end|>\n<|assistant|>\n3<|end|>\n"
    _, llava_processor = tiny_llava
    _, qwen_processor = tiny_qwen2_vl
    _, llama_tokenizer = tiny_llama
    assert llava_processor.apply_chat_template(messages, tokenize=False) == expected.format(img="<image>")
    assert qwen_processor.apply_chat_template(messages, tokenize=False) == expected.format(
        img="<|vision_start|><|image_pad|><|vision_end|>"
    )
    text_only = [{"role": "user", "content": "Hi"}]
    assert llama_tokenizer.apply_chat_template(text_only, tokenize=False) == "<|user|>\nHi<|end|>\n"
    assert (
        llama_tokenizer.apply_chat_template(text_only, tokenize=False, add_generation_prompt=True)
        == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    )
    role_ids = llama_tokenizer.apply_chat_template(text_only, tokenize=True, return_dict=True)["input_ids"]
    assert role_ids[0] == llama_tokenizer.convert_tokens_to_ids("<|user|>")


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen2_vl"])
def test_assistant_mask_covers_exactly_the_answer_with_images(fixture, request):
    _, processor = request.getfixturevalue(fixture)
    image = _image()
    messages = _conversation("How many circles?", "3 circles", image=image)
    messages += [
        {"role": "user", "content": [{"type": "text", "text": "And squares?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "7"}]},
    ]
    out = processor.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt"
    )
    ids, mask = out["input_ids"][0], out["assistant_masks"][0].bool()
    tokenizer = processor.tokenizer
    assert tokenizer.decode(ids[mask]) == "3 circles<|end|>7<|end|>"
    # the masked span is contiguous per turn and ends on the end-of-turn token
    assert ids[mask].tolist().count(tokenizer.eos_token_id) == 2
    assert "pixel_values" in out and (ids == processor.image_token_id).sum() > 1  # image tokens were expanded


def test_assistant_mask_text_tokenizer(tiny_llama):
    _, tokenizer = tiny_llama
    messages = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(masked) == "4<|end|>"


# ---------------------------------------------------------------------------------------------------------------------
# Forward, loss and generation
# ---------------------------------------------------------------------------------------------------------------------


def _vlm_batch(processor, answers=("3", "red")):
    images = [_image(40, 30), _image(56, 56, (0, 0, 255))]
    texts = [
        processor.apply_chat_template(_conversation(f"Question {i}?", answer), tokenize=False)
        for i, answer in enumerate(answers)
    ]
    batch = processor(images=images, text=texts, padding=True, return_tensors="pt")
    labels = batch["input_ids"].clone()
    labels[batch["attention_mask"] == 0] = -100
    return batch, labels


def _receives_gradient(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_llava_processor_and_forward_with_labels():
    model, processor = build_tiny_llava(seed=0)
    batch, labels = _vlm_batch(processor)
    assert batch["pixel_values"].shape == (2, 3, testing.LLAVA_IMAGE_SIZE, testing.LLAVA_IMAGE_SIZE)
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert n_image_tokens.tolist() == [testing.LLAVA_NUM_IMAGE_TOKENS] * 2
    model.train()
    out = model(**batch, labels=labels)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert _receives_gradient(model.model.vision_tower)


def test_qwen2_vl_processor_and_forward_with_labels():
    model, processor = build_tiny_qwen2_vl(seed=0)
    batch, labels = _vlm_batch(processor)
    grid = batch["image_grid_thw"]
    assert grid.shape == (2, 3)
    # flattened patches: one row per (temporal, h, w) patch, each 3 * 2 * 14 * 14 values
    assert batch["pixel_values"].shape == (int(grid.prod(dim=1).sum()), 3 * 2 * 14 * 14)
    n_image_tokens = (batch["input_ids"] == model.config.image_token_id).sum(dim=1)
    assert n_image_tokens.tolist() == (grid.prod(dim=1) // 4).tolist()
    assert all(4 <= n <= 16 for n in n_image_tokens.tolist())
    model.train()
    out = model(**batch, labels=labels)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert _receives_gradient(model.model.visual)


@pytest.mark.parametrize("fixture", ["tiny_llava", "tiny_qwen2_vl"])
def test_vlm_generate(fixture, request):
    model, processor = request.getfixturevalue(fixture)
    prompt = processor.apply_chat_template(_conversation()[:1], tokenize=False, add_generation_prompt=True)
    batch = processor(images=[_image()], text=[prompt], return_tensors="pt")
    out = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and batch["input_ids"].shape[1] < out.shape[1] <= batch["input_ids"].shape[1] + 4


def test_llama_forward_and_generate(tiny_llama):
    model, tokenizer = tiny_llama
    batch = tokenizer(["How many circles?", "red"], padding=True, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        assert math.isfinite(model(**batch, labels=labels).loss.item())
    prompt = tokenizer(["Hi"], return_tensors="pt")
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert prompt["input_ids"].shape[1] < out.shape[1] <= prompt["input_ids"].shape[1] + 3


# ---------------------------------------------------------------------------------------------------------------------
# Save / load by path
# ---------------------------------------------------------------------------------------------------------------------


def _assert_vlm_round_trip(path, model, processor):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "chat_template.jinja",
    } <= names
    loaded_model = AutoModelForImageTextToText.from_pretrained(path)
    loaded_processor = AutoProcessor.from_pretrained(path)
    assert type(loaded_model) is type(model)
    assert type(loaded_processor) is type(processor)
    assert loaded_processor.chat_template == processor.chat_template
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert _state_dicts_equal(loaded_model, model)

    text = processor.apply_chat_template(_conversation(), tokenize=False)
    assert loaded_processor.apply_chat_template(_conversation(), tokenize=False) == text
    batch = processor(images=[_image()], text=[text], return_tensors="pt")
    loaded_batch = loaded_processor(images=[_image()], text=[text], return_tensors="pt")
    assert batch.keys() == loaded_batch.keys()
    assert all(torch.equal(batch[k], loaded_batch[k]) for k in batch)
    with torch.no_grad():
        assert torch.equal(loaded_model(**loaded_batch).logits, model(**batch).logits)


def test_llava_save_load_round_trip(tiny_llava_path, tiny_llava):
    _assert_vlm_round_trip(tiny_llava_path, *tiny_llava)


def test_qwen2_vl_save_load_round_trip(tmp_path, tiny_qwen2_vl):
    path = save_tiny_model("qwen2_vl", tmp_path / "qwen", seed=0)
    _assert_vlm_round_trip(path, *tiny_qwen2_vl)
    assert type(testing.load_processor(path)) is testing.Qwen2VLImageOnlyProcessor


def test_llama_save_load_round_trip(tiny_llama_path, tiny_llama):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = tiny_llama
    loaded_model = AutoModelForCausalLM.from_pretrained(tiny_llama_path)
    loaded_tokenizer = AutoTokenizer.from_pretrained(tiny_llama_path)
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert (loaded_tokenizer.pad_token, loaded_tokenizer.eos_token) == (tokenizer.pad_token, tokenizer.eos_token)
    batch = tokenizer(["How many circles are in the image?"], return_tensors="pt")
    assert torch.equal(
        loaded_tokenizer(["How many circles are in the image?"], return_tensors="pt")["input_ids"], batch["input_ids"]
    )
    with torch.no_grad():
        assert torch.equal(loaded_model(**batch).logits, model(**batch).logits)
    assert loaded_model.generation_config.eos_token_id == tokenizer.eos_token_id
