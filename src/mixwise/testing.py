"""An offline zoo of tiny, randomly initialised models for tests.

Everything here is built locally from configs -- no hub access is ever needed -- and is deterministic given a seed:

* :func:`build_tokenizer` trains a small byte-level BPE tokenizer (default 1024 tokens, never produces an unknown
  token) on a built-in corpus covering the "toy world" vocabulary (shapes, colours, positions, digits, bar charts...).
* :func:`build_tiny_llava` builds a LLaVA model (CLIP vision tower + Llama text model, about 0.2M parameters) and its
  :class:`~transformers.LlavaProcessor`.
* :func:`build_tiny_qwen2_vl` builds a Qwen2-VL model (about 0.2M parameters) and an image-only Qwen2-VL processor
  (:class:`Qwen2VLImageOnlyProcessor`; the stock one needs a video processor, which needs torchvision).
* :func:`build_tiny_llama` builds a text-only :class:`~transformers.LlamaForCausalLM` with the same tokenizer.
* :func:`save_tiny_model` writes any of them to a directory, so that loading by path with the ``Auto*`` classes works.

Models are float32 and returned in eval mode (as ``from_pretrained`` would return them); their generation configs
carry the zoo's pad/bos/eos ids (eos is the end-of-turn token ``<|end|>``). All tokenizers and processors carry a
compact chat template that accepts string or multimodal (list of parts) message contents and marks assistant turns
with ``{% generation %}`` so that ``return_assistant_tokens_mask=True`` (TRL's ``assistant_only_loss``) works.
Rendered conversations look like::

    <|system|>\\nBe brief.<|end|>\\n<|user|>\\n<image>How many circles?<|end|>\\n<|assistant|>\\n3<|end|>\\n

Example::

    from mixwise.testing import build_tiny_llava, save_tiny_model

    model, processor = build_tiny_llava(seed=0)
    path = save_tiny_model("llava", tmp_path / "llava")
    model = AutoModelForImageTextToText.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)

Loading a saved ``qwen2_vl`` processor with :class:`~transformers.AutoProcessor` requires ``mixwise.testing`` to have
been imported first (importing it registers :class:`Qwen2VLImageOnlyProcessor`); :func:`load_processor` does both.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import pathlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedConfig,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig, Qwen2VLVisionConfig
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

__all__ = [
    "ZOO_KINDS",
    "SPECIAL_TOKENS",
    "LLAVA_IMAGE_SIZE",
    "LLAVA_NUM_IMAGE_TOKENS",
    "Qwen2VLImageOnlyProcessor",
    "build_tokenizer",
    "build_llava",
    "build_tiny_llava",
    "build_tiny_qwen2_vl",
    "build_tiny_llama",
    "chat_template",
    "cpu_trainer_kwargs",
    "load_processor",
    "save_tiny_model",
    "toy_corpus",
]

ZOO_KINDS: tuple[str, ...] = ("llava", "qwen2_vl", "llama")
"""The model kinds :func:`save_tiny_model` accepts."""

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "<|end|>"  # end of turn doubles as end of sequence, so generation stops after one assistant turn
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
LLAVA_IMAGE_TOKEN = "<image>"
QWEN_VISION_START, QWEN_IMAGE_PAD, QWEN_VISION_END, QWEN_VIDEO_PAD = (
    "<|vision_start|>",
    "<|image_pad|>",
    "<|vision_end|>",
    "<|video_pad|>",
)
SPECIAL_TOKENS: tuple[str, ...] = (
    PAD_TOKEN,
    BOS_TOKEN,
    EOS_TOKEN,
    *ROLE_TOKENS,
    LLAVA_IMAGE_TOKEN,
    QWEN_VISION_START,
    QWEN_IMAGE_PAD,
    QWEN_VISION_END,
    QWEN_VIDEO_PAD,
)
"""Special tokens, in id order (``<pad>`` is id 0)."""

# LLaVA vision tower: 32x32 images, 8x8 patches -> 16 patches (+ CLS, dropped by the "default" feature strategy).
LLAVA_IMAGE_SIZE = 32
LLAVA_PATCH_SIZE = 8
LLAVA_NUM_IMAGE_TOKENS = (LLAVA_IMAGE_SIZE // LLAVA_PATCH_SIZE) ** 2
# Qwen2-VL: 14 px patches merged 2x2 -> one token per 28x28 px; images are resized to 56x56 .. 112x112 px,
# i.e. 4 to 16 image tokens.
QWEN_PATCH_SIZE = 14
QWEN_MERGE_SIZE = 2
QWEN_MIN_PIXELS = (2 * QWEN_PATCH_SIZE * QWEN_MERGE_SIZE) ** 2
QWEN_MAX_PIXELS = (4 * QWEN_PATCH_SIZE * QWEN_MERGE_SIZE) ** 2

# Text model sizes shared by the three kinds.
_TEXT_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=2048,
)

_NAMES = {"llava": "mixwise-tiny-llava", "qwen2_vl": "mixwise-tiny-qwen2-vl", "llama": "mixwise-tiny-llama"}

# ---------------------------------------------------------------------------------------------------------------------
# Corpus and tokenizer
# ---------------------------------------------------------------------------------------------------------------------

SHAPES = ("circle", "square", "triangle")
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white", "gray")
POSITIONS = ("left of", "right of", "above", "below")


def toy_corpus() -> list[str]:
    """The built-in training corpus of :func:`build_tokenizer`: a few thousand short "toy world" sentences.

    Covers counting questions, shapes, colours, spatial relations, digits 0-9 and numbers up to 100, letters A-Z,
    bar charts, OCR-style questions and answer-format instructions. Built without randomness, so it is always the
    same list.
    """
    lines: list[str] = [
        "Answer with a single word.",
        "Answer with a single number.",
        "Answer with a single digit.",
        "Answer with a single letter.",
        "What text does the image say?",
        "What is the text in the image?",
        "What does the text say?",
        "Which digit is written in the image?",
        "Which letter is written in the image?",
        "Which bar is the tallest in the bar chart?",
        "Which bar is the shortest in the bar chart?",
        "What is the value of the tallest bar?",
        "How many bars are in the chart?",
        "Is there a shape in the image? yes no",
        "The image shows a bar chart with bars of different colours.",
        "Describe the image. The image is blank.",
        "You are a helpful assistant. Look at the image and answer the question.",
        "0 1 2 3 4 5 6 7 8 9 10",
        " ".join(chr(c) for c in range(ord("A"), ord("Z") + 1)),
        " ".join(chr(c) for c in range(ord("a"), ord("z") + 1)),
        "Hello, world! This is a test: (1 + 2) * 3 = 9; 'quotes' and \"double quotes\" - ok?",
    ]
    questions = [
        "What is the colour of the shape?",
        "What text does the image say?",
        "Which digit is written in the image?",
        "Which bar is the tallest in the bar chart?",
        "How many shapes are in the image?",
        "Count how many shapes there are and say which one is the tallest.",
    ]
    formats = ("word", "number", "digit", "letter", "colour", "shape")
    lines += [f"{q} Answer with a single {f}." for q, f in itertools.product(questions, formats)]
    lines += [f"The answer is {n}. {n}" for n in range(101)]
    lines += [f"The letter {chr(c)} is written in the image. {chr(c)}" for c in range(ord("A"), ord("Z") + 1)]
    lines += [f"The digit {d} is written in the image. {d}" for d in range(10)]
    for shape in SHAPES:
        lines += [f"How many {shape}s are in the image?", f"How many {shape}s are there? Count the {shape}s."]
        lines += [f"There are {n} {shape}s in the image." for n in range(10)]
        lines.append(f"Which shape is it? It is a {shape}. {shape.capitalize()}")
    for colour in COLOURS:
        lines += [
            f"What is the value of the {colour} bar? The {colour} bar is the tallest.",
            f"What is the colour of the shape? The colour is {colour}. {colour.capitalize()}",
            f"What colour is the text? {colour}",
        ]
    for colour, shape in itertools.product(COLOURS, SHAPES):
        lines += [
            f"What is the colour of the {shape}? The {shape} is {colour}.",
            f"How many {colour} {shape}s are in the image?",
        ]
    pairs = list(itertools.product(COLOURS, SHAPES))
    for (c1, s1), pos, (c2, s2) in itertools.product(pairs, POSITIONS, pairs):
        lines.append(f"Is the {c1} {s1} {pos} the {c2} {s2}? Yes, the {c1} {s1} is {pos} the {c2} {s2}.")
    return lines


@functools.lru_cache(maxsize=8)
def _trained_tokenizer_json(extra_corpus: tuple[str, ...], vocab_size: int) -> str:
    tokenizer = Tokenizer(models.BPE())  # byte-level: every byte is in the alphabet, so no unknown token exists
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([*toy_corpus(), *extra_corpus], trainer=trainer)
    return tokenizer.to_str()


def chat_template(image_placeholder: str = LLAVA_IMAGE_TOKEN) -> str:
    """The zoo's Jinja chat template, rendering image parts as ``image_placeholder``.

    Message ``content`` may be a string or a list of parts ``{"type": "image", ...}`` / ``{"type": "text", "text":
    ...}`` (extra keys, e.g. ``None`` values from :mod:`datasets` structs, are ignored). Each turn renders as
    ``<|role|>\\n{content}<|end|>\\n``; the assistant's content and its ``<|end|>`` are wrapped in
    ``{% generation %}`` for assistant-token masks. ``add_generation_prompt`` appends ``<|assistant|>\\n``.
    """
    image = image_placeholder.replace("'", "\\'")
    return (
        "{%- macro render(content) -%}"
        "{%- if content is string -%}{{ content }}"
        "{%- elif content is not none -%}"
        "{%- for part in content -%}"
        "{%- if part['type'] == 'image' -%}{{ '" + image + "' }}"
        "{%- elif part['type'] == 'text' and part['text'] is not none -%}{{ part['text'] }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- endif -%}"
        "{%- endmacro -%}"
        "{%- for message in messages -%}"
        "{{ '<|' + message['role'] + '|>\\n' }}"
        "{%- if message['role'] == 'assistant' -%}"
        "{%- generation -%}{{ render(message['content']) }}{{ '" + EOS_TOKEN + "' }}{%- endgeneration -%}"
        "{{ '\\n' }}"
        "{%- else -%}"
        "{{ render(message['content']) }}{{ '" + EOS_TOKEN + "\\n' }}"
        "{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{ '<|assistant|>\\n' }}{%- endif -%}"
    )


QWEN2_VL_IMAGE_PLACEHOLDER = QWEN_VISION_START + QWEN_IMAGE_PAD + QWEN_VISION_END


def build_tokenizer(extra_corpus: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train (or fetch from the in-process cache) the zoo's byte-level BPE tokenizer.

    The tokenizer is trained deterministically on :func:`toy_corpus` plus ``extra_corpus`` with at most
    ``vocab_size`` tokens (fewer if the corpus has too few pairs to merge). Being byte-level it encodes any text,
    never emitting an unknown token. Special tokens (:data:`SPECIAL_TOKENS`): ``<pad>`` (pad), ``<s>`` (bos, not added
    automatically), ``<|end|>`` (eos and end of turn), role markers ``<|system|>``/``<|user|>``/``<|assistant|>``,
    ``<image>`` (LLaVA) and ``<|vision_start|>``/``<|image_pad|>``/``<|vision_end|>``/``<|video_pad|>`` (Qwen2-VL).
    The chat template is :func:`chat_template` with ``<image>`` as image placeholder.

    Each call returns a fresh tokenizer object (only the training is cached), so callers may mutate it freely.
    """
    tokenizer_json = _trained_tokenizer_json(tuple(extra_corpus or ()), vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(tokenizer_json),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN)],
        model_max_length=2048,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = chat_template(LLAVA_IMAGE_TOKEN)
    return tokenizer


def _fresh_tokenizer(tokenizer: PreTrainedTokenizerFast | None, name: str, template: str) -> PreTrainedTokenizerFast:
    if tokenizer is None:
        tokenizer = build_tokenizer()
    else:  # never mutate the caller's tokenizer
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=Tokenizer.from_str(tokenizer.backend_tokenizer.to_str()),
            **{k: v for k, v in tokenizer.init_kwargs.items() if k not in ("tokenizer_object", "name_or_path")},
        )
    missing = [t for t in SPECIAL_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        raise ValueError(f"tokenizer lacks the zoo's special tokens {missing}; build it with `build_tokenizer`.")
    tokenizer.chat_template = template
    tokenizer.name_or_path = name
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch inside a forked RNG state, leaving the caller's global RNG untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _token_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, int]:
    return dict(
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id
    )


def _finish(model: torch.nn.Module, name: str, tokenizer: PreTrainedTokenizerFast) -> None:
    model.config._name_or_path = name
    model.name_or_path = name
    generation_config = model.generation_config
    for key, value in _token_ids(tokenizer).items():
        setattr(generation_config, key, value)
    model.eval()


def build_tiny_llava(
    seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """Build a tiny random LLaVA and its processor.

    Vision tower: CLIP, 32x32 px images, 8 px patches, hidden 32, 2 layers, 2 heads (16 image tokens per image;
    the CLS token is dropped by the ``"default"`` feature strategy). Projector: 2-layer GELU MLP. Text model: Llama,
    hidden 64, 2 layers, 4 heads (2 KV heads), intermediate 128, vocabulary = the tokenizer's. Weights are drawn from
    ``seed`` without disturbing the global torch RNG. The processor resizes and center-crops any image to 32x32 and
    expands each ``<image>`` to 16 image tokens; its chat template renders image parts as ``<image>``.
    """
    return build_llava(seed=seed, tokenizer=tokenizer)


def build_llava(
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    *,
    image_size: int = LLAVA_IMAGE_SIZE,
    patch_size: int = LLAVA_PATCH_SIZE,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    vision_heads: int = 2,
    vision_intermediate: int = 64,
    text_hidden: int = _TEXT_SIZES["hidden_size"],
    text_layers: int = _TEXT_SIZES["num_hidden_layers"],
    text_heads: int = _TEXT_SIZES["num_attention_heads"],
    text_kv_heads: int = _TEXT_SIZES["num_key_value_heads"],
    text_intermediate: int = _TEXT_SIZES["intermediate_size"],
    vocab_size: int | None = None,
    name: str = _NAMES["llava"],
) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A random LLaVA of any size (CLIP tower + GELU projector + Llama) with its processor, giving
    ``(image_size / patch_size)^2`` image tokens per image. `vocab_size` larger than the tokenizer's pads the embedding and LM head to a realistic vocabulary (e.g. 32000, as Llama/LLaVA-1.5) so that
    benchmarks pay a realistic LM-head cost; the extra rows are never produced by the tokenizer. The defaults are
    [`build_tiny_llava`]'s sizes."""
    tokenizer = _fresh_tokenizer(tokenizer, name, chat_template(LLAVA_IMAGE_TOKEN))
    vision_config = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=vision_intermediate,
        num_hidden_layers=vision_layers,
        num_attention_heads=vision_heads,
        projection_dim=vision_hidden,
    )
    text_config = LlamaConfig(
        vocab_size=max(vocab_size or 0, len(tokenizer)),
        tie_word_embeddings=False,
        hidden_size=text_hidden,
        intermediate_size=text_intermediate,
        num_hidden_layers=text_layers,
        num_attention_heads=text_heads,
        num_key_value_heads=text_kv_heads,
        max_position_embeddings=_TEXT_SIZES["max_position_embeddings"],
        **_token_ids(tokenizer),
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(LLAVA_IMAGE_TOKEN),
        image_seq_length=(image_size // patch_size) ** 2,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        tie_word_embeddings=False,
    )
    with _seeded(seed):
        model = LlavaForConditionalGeneration(config)
    _finish(model, name, tokenizer)

    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_resize=True,
        do_center_crop=True,
        do_convert_rgb=True,
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        chat_template=chat_template(LLAVA_IMAGE_TOKEN),
        image_token=LLAVA_IMAGE_TOKEN,
        num_additional_image_tokens=1,
    )
    return model, processor


class Qwen2VLImageOnlyProcessor(Qwen2VLProcessor):
    """A :class:`~transformers.Qwen2VLProcessor` without the video processor.

    The stock processor requires a video processor, which requires torchvision; this one only handles text and
    images (``videos=`` is not supported). Importing :mod:`mixwise.testing` registers it, so that
    ``AutoProcessor.from_pretrained(path)`` can load a saved one.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # The parent passes (image_processor, tokenizer, video_processor) positionally to ProcessorMixin, which only
        # keeps as many as this class's attributes (image_processor, tokenizer).
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


class _MixwiseQwen2VLImageOnlyConfig(PreTrainedConfig):
    """Placeholder config: the key under which :class:`Qwen2VLImageOnlyProcessor` is registered with AutoProcessor.

    ``AutoProcessor`` resolves a saved ``processor_class`` name among its registered processors; registering under a
    private config type (instead of ``Qwen2VLConfig``) leaves real Qwen2-VL checkpoints unaffected.
    """

    model_type = "mixwise_qwen2_vl_image_only"


AutoProcessor.register(_MixwiseQwen2VLImageOnlyConfig, Qwen2VLImageOnlyProcessor, exist_ok=True)


def build_tiny_qwen2_vl(
    seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[Qwen2VLForConditionalGeneration, ProcessorMixin]:
    """Build a tiny random Qwen2-VL and its (image-only) processor.

    Vision tower: 14 px patches (temporal patch 2), embed dim 32, 2 layers, 2 heads, 2x2 spatial merge into the text
    width. Text model: hidden 64, 2 layers, 4 heads (2 KV heads, head dim 16, M-RoPE sections [2, 3, 3]),
    intermediate 128, vocabulary = the tokenizer's. Weights are drawn from ``seed`` without disturbing the global
    torch RNG. The processor (:class:`Qwen2VLImageOnlyProcessor`) resizes images to between 56x56 and 112x112 px
    (multiples of 28), i.e. 4 to 16 image tokens, and returns flattened ``pixel_values`` plus ``image_grid_thw``; its
    chat template renders image parts as ``<|vision_start|><|image_pad|><|vision_end|>``.
    """
    name = _NAMES["qwen2_vl"]
    template = chat_template(QWEN2_VL_IMAGE_PLACEHOLDER)
    tokenizer = _fresh_tokenizer(tokenizer, name, template)
    # M-RoPE splits the rotary half of the head dim (64 / 4 / 2 = 8) into temporal, height and width sections.
    mrope_section = [2, 3, 3]
    text_config = Qwen2VLTextConfig(
        vocab_size=len(tokenizer),
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section},
        **_TEXT_SIZES,
        **_token_ids(tokenizer),
    )
    vision_config = Qwen2VLVisionConfig(
        depth=2,
        embed_dim=32,
        hidden_size=_TEXT_SIZES["hidden_size"],
        num_heads=2,
        mlp_ratio=2,
        in_channels=3,
        patch_size=QWEN_PATCH_SIZE,
        spatial_merge_size=QWEN_MERGE_SIZE,
        temporal_patch_size=2,
    )
    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids(QWEN_IMAGE_PAD),
        video_token_id=ids(QWEN_VIDEO_PAD),
        vision_start_token_id=ids(QWEN_VISION_START),
        vision_end_token_id=ids(QWEN_VISION_END),
        tie_word_embeddings=False,
    )
    with _seeded(seed):
        model = Qwen2VLForConditionalGeneration(config)
    _finish(model, name, tokenizer)

    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=QWEN_MIN_PIXELS,
        max_pixels=QWEN_MAX_PIXELS,
        patch_size=QWEN_PATCH_SIZE,
        merge_size=QWEN_MERGE_SIZE,
        temporal_patch_size=2,
    )
    processor = Qwen2VLImageOnlyProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=template)
    return model, processor


def build_tiny_llama(
    seed: int = 0, tokenizer: PreTrainedTokenizerFast | None = None
) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Build a tiny random text-only Llama and its tokenizer.

    Hidden 64, 2 layers, 4 heads (2 KV heads), intermediate 128, untied embeddings, vocabulary = the tokenizer's
    (:func:`build_tokenizer` by default, chat template included). Weights are drawn from ``seed`` without disturbing
    the global torch RNG.
    """
    name = _NAMES["llama"]
    tokenizer = _fresh_tokenizer(tokenizer, name, chat_template(LLAVA_IMAGE_TOKEN))
    config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, **_TEXT_SIZES, **_token_ids(tokenizer))
    with _seeded(seed):
        model = LlamaForCausalLM(config)
    _finish(model, name, tokenizer)
    return model, tokenizer


_BUILDERS = {"llava": build_tiny_llava, "qwen2_vl": build_tiny_qwen2_vl, "llama": build_tiny_llama}


def cpu_trainer_kwargs(output_dir: str | os.PathLike, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for `TrainingArguments`, `SFTConfig` or `GRPOConfig` that run a tiny model on CPU in a
    test: fp32, no reporting, no progress bars, no gradient checkpointing, no checkpoints, every dataset column kept
    (the mixture's `source` and `id`), batch 2, lr 1e-3. `overrides` win."""
    kwargs: dict[str, Any] = dict(
        output_dir=os.fspath(output_dir),
        use_cpu=True,
        bf16=False,
        report_to=[],
        disable_tqdm=True,
        remove_unused_columns=False,
        gradient_checkpointing=False,
        save_strategy="no",
        per_device_train_batch_size=2,
        learning_rate=1e-3,
    )
    kwargs.update(overrides)
    return kwargs


def save_tiny_model(kind: str, path: str | os.PathLike, seed: int = 0) -> pathlib.Path:
    """Build the zoo model ``kind`` (one of :data:`ZOO_KINDS`) with ``seed`` and save it under ``path``.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` and the processor (vision kinds:
    ``processor_config.json`` with the image processor, tokenizer files, ``chat_template.jinja``) or the tokenizer
    (``llama``). Load it back with ``AutoModelForImageTextToText`` / ``AutoModelForCausalLM`` and ``AutoProcessor`` /
    ``AutoTokenizer`` (for ``qwen2_vl``, import :mod:`mixwise.testing` first, or use :func:`load_processor`).
    Returns the directory as a :class:`pathlib.Path`.
    """
    if kind not in _BUILDERS:
        raise ValueError(f"unknown zoo kind {kind!r}; expected one of {ZOO_KINDS}")
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model, processing = _BUILDERS[kind](seed=seed)
    model.save_pretrained(path)
    processing.save_pretrained(path)
    return path


def load_processor(path: str | os.PathLike) -> ProcessorMixin | PreTrainedTokenizerFast:
    """Load the processor (or, for ``llama``, the tokenizer) saved by :func:`save_tiny_model` at ``path``.

    Equivalent to ``AutoProcessor.from_pretrained(path)``; exists so that the import of this module, which registers
    :class:`Qwen2VLImageOnlyProcessor`, is explicit.
    """
    return AutoProcessor.from_pretrained(str(path))
