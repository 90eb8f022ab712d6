"""A deterministic toy multimodal world: the library's embedded default data.

Each *family* is a tiny image-question-answer task with a short answer drawn from a small closed set
(:func:`answer_space`), learnable by a tiny randomly initialised VLM from a few hundred/thousand rows.
Families are meant to be used as separate *sources* when measuring transfer between sources.

- ``count``: 1-5 non-overlapping shapes of one kind and colour (3x3 grid) -> "1" .. "5".
- ``colour``: one big shape in a colour -> one of 8 colour names (:data:`COLOURS`).
- ``spatial``: two shapes of different kinds and colours, far apart along one axis -> "left"/"right"/"above"/"below".
- ``ocr``: a short token in PIL's embedded bitmap font -> one of 20 words / 2-digit numbers (:data:`OCR_VOCAB`).
- ``chart``: 3-4 coloured bars, one clearly the tallest -> its colour name.
- ``digits``: a real handwritten digit from ``sklearn.datasets.load_digits`` -> "0" .. "9".
- ``shape``: one big shape (same generator as ``colour``) -> "circle"/"square"/"triangle"/"diamond".

Questions come from a few templates per family (:data:`TEMPLATES`; the first is canonical). The answer is a
deterministic function of the image (and, for ``spatial``, of which two shape kinds the question names).

Everything is deterministic: row ``i`` of ``make_source(family, n, split, seed)`` is generated from its own
``numpy.random.default_rng`` seeded by ``(seed, family, split, i)`` through a stable (sha256) derivation, so the same
arguments give byte-identical images and text in any process, and a smaller ``n`` yields a prefix of a larger one.
Nothing is downloaded: shapes and charts are drawn with PIL, text uses PIL's embedded bitmap font and digits come
from the copy bundled with scikit-learn (whose indices are split disjointly between train / validation / test).

Rows use TRL's formats (see :func:`make_source`). Images are stored through ``datasets.Image`` (PNG bytes) and
decode back to ``PIL.Image.Image``.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable
from PIL import Image, ImageDraw, ImageFont

from .fingerprint import stable_int

__all__ = [
    "COLOURS",
    "FAMILIES",
    "FORMATS",
    "OCR_VOCAB",
    "SHAPES",
    "SPLITS",
    "answer_space",
    "corpus",
    "corrupt_rows",
    "digit_indices",
    "features",
    "image_bytes",
    "make_source",
    "make_world",
    "save_world",
]

FORMATS = ("sft", "rl")
SPLITS = ("train", "validation", "test")
MIN_IMAGE_SIZE = 16

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 135, 0),
    "yellow": (240, 215, 0),
    "green": (30, 160, 50),
    "blue": (30, 70, 225),
    "purple": (135, 45, 185),
    "pink": (255, 110, 190),
    "black": (20, 20, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
RELATIONS = ("left", "right", "above", "below")
OCR_VOCAB = (
    "cat", "dog", "sun", "box", "cup", "hat", "pen", "map", "bus", "egg", "fox", "key",
    "12", "25", "37", "48", "53", "64", "79", "86",
)  # fmt: skip
_TEXT_INKS = ((0, 0, 0), (20, 20, 110), (110, 20, 20), (20, 90, 20))
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased and recognisable at 32x32
_DIGIT_SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}

# Question templates; the first one is the canonical phrasing. Fields: {kind}, {a}, {b} range over SHAPES.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "count": ("How many shapes are in the image?", "How many shapes are there?", "Count the shapes in the image."),
    "colour": ("What colour is the shape?", "What colour is the {kind}?", "Which colour is the shape in the image?"),
    "spatial": (
        "Is the {a} left of, right of, above or below the {b}?",
        "Where is the {a} relative to the {b}: left, right, above or below?",
    ),
    "ocr": ("What text is in the image?", "What does the text say?", "Read the text in the image."),
    "chart": ("Which bar is the tallest?", "Which colour is the tallest bar?", "Which bar is the highest?"),
    "digits": ("Which digit is written?", "What digit is shown in the image?", "Which number is handwritten here?"),
    "shape": ("What shape is in the image?", "Which shape is shown?", "What kind of shape is this?"),
}


class _Row(NamedTuple):
    """Where a row sits; families needing more than their rng (``digits``) read it."""

    seed: int
    split: str
    index: int


Example = tuple[Image.Image, str, str]


# --------------------------------------------------------------------------------------------------------------------
# seeding and drawing helpers
# --------------------------------------------------------------------------------------------------------------------
def _rng(*parts: object) -> np.random.Generator:
    return np.random.default_rng(stable_int(*parts))


def _background(rng: np.random.Generator) -> tuple[int, int, int]:
    """A random near-white background (a nuisance variable, never an answer)."""
    return tuple(int(v) for v in rng.integers(225, 256, size=3))


def _pick(rng: np.random.Generator, options: Sequence[str], k: int | None = None):
    if k is None:
        return options[int(rng.integers(len(options)))]
    return [options[int(j)] for j in rng.choice(len(options), size=k, replace=False)]


def _question(rng: np.random.Generator, family: str, **fields: str) -> str:
    return _pick(rng, TEMPLATES[family]).format(**fields)


def _draw_shape(draw: ImageDraw.ImageDraw, kind: str, cx: float, cy: float, r: float, fill) -> None:
    """Draw ``kind`` centred on (cx, cy) inside a circle of radius ``r`` (all shapes have similar extent)."""
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        h = r * 0.85
        draw.rectangle((cx - h, cy - h, cx + h, cy + h), fill=fill)
    elif kind == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif kind == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # pragma: no cover - guarded by SHAPES
        raise ValueError(f"unknown shape kind {kind!r}")


class _Canvas:
    """A supersampled drawing surface in output-pixel coordinates; ``image()`` downsamples with a box filter."""

    def __init__(self, size: int, background) -> None:
        self.size = size
        self._img = Image.new("RGB", (size * _SUPERSAMPLE, size * _SUPERSAMPLE), background)
        self._draw = ImageDraw.Draw(self._img)

    def shape(self, kind: str, cx: float, cy: float, r: float, fill) -> None:
        s = _SUPERSAMPLE
        _draw_shape(self._draw, kind, cx * s, cy * s, r * s, fill)

    def rectangle(self, box: Sequence[float], fill) -> None:
        self._draw.rectangle(tuple(v * _SUPERSAMPLE for v in box), fill=fill)

    def image(self) -> Image.Image:
        return self._img.resize((self.size, self.size), Image.Resampling.BOX)


# --------------------------------------------------------------------------------------------------------------------
# families: each returns (image, question, answer) from an rng
# --------------------------------------------------------------------------------------------------------------------
def _count(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """1-5 shapes of one kind and colour, one per distinct cell of a 3x3 grid (never overlapping)."""
    n = int(rng.integers(1, 6))
    kind, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
    canvas = _Canvas(size, _background(rng))
    cell = size / 3
    r = cell * 0.32
    slack = cell / 2 - r - 0.5
    for c in rng.choice(9, size=n, replace=False):
        cx = (int(c) % 3 + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (int(c) // 3 + 0.5) * cell + rng.uniform(-slack, slack)
        canvas.shape(kind, cx, cy, r, COLOURS[colour])
    return canvas.image(), _question(rng, "count"), str(n)


def _big_shape(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, str]:
    kind, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
    canvas = _Canvas(size, _background(rng))
    r = size * rng.uniform(0.28, 0.36)
    jitter = size / 2 - r - 1
    cx, cy = size / 2 + rng.uniform(-jitter, jitter, size=2)
    canvas.shape(kind, cx, cy, r, COLOURS[colour])
    return canvas.image(), kind, colour


def _colour(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """One big shape; the answer is its colour."""
    image, kind, colour = _big_shape(rng, size)
    return image, _question(rng, "colour", kind=kind), colour


def _shape(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """One big shape; the answer is its kind."""
    image, kind, _ = _big_shape(rng, size)
    return image, _question(rng, "shape"), kind


def _spatial(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """Two shapes of different kinds and colours, separated along one axis by far more than along the other."""
    a, b = _pick(rng, SHAPES, 2)
    colour_a, colour_b = _pick(rng, list(COLOURS), 2)
    relation = _pick(rng, RELATIONS)
    r = size * 0.13
    gap = size * rng.uniform(0.42, 0.58)  # distance along the asked axis
    off = size * rng.uniform(-0.08, 0.08)  # small offset along the other axis
    across = size * rng.uniform(0.3, 0.7)  # where the pair sits on the other axis
    sign = -1 if relation in ("left", "above") else 1  # a is left of / above b -> a has the smaller coordinate
    major_a, major_b = size / 2 + sign * gap / 2, size / 2 - sign * gap / 2
    minor_a, minor_b = across + off / 2, across - off / 2
    if relation in ("left", "right"):
        (xa, ya), (xb, yb) = (major_a, minor_a), (major_b, minor_b)
    else:
        (xa, ya), (xb, yb) = (minor_a, major_a), (minor_b, major_b)
    canvas = _Canvas(size, _background(rng))
    canvas.shape(a, xa, ya, r, COLOURS[colour_a])
    canvas.shape(b, xb, yb, r, COLOURS[colour_b])
    return canvas.image(), _question(rng, "spatial", a=a, b=b), relation


@functools.lru_cache(maxsize=1)
def _font() -> ImageFont.ImageFont:
    # The embedded bitmap font: no file, no FreeType, identical rendering everywhere.
    loader = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)
    return loader()


@functools.cache
def _glyph_mask(text: str) -> Image.Image:
    """``text`` rendered once at the font's native size, cropped to its ink (mode L, 255 = ink)."""
    font = _font()
    left, top, right, bottom = font.getbbox(text)
    mask = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(mask).text((1 - left, 1 - top), text, fill=255, font=font)
    return mask.crop(mask.getbbox())


def _ocr(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """A vocabulary token in the bitmap font, scaled (nearest, integer factor where it fits) and jittered."""
    text = _pick(rng, OCR_VOCAB)
    mask = _glyph_mask(text)
    scale = min(0.9 * size / mask.width, 0.6 * size / mask.height)
    if scale >= 1:
        k = int(scale)
        mask = mask.resize((mask.width * k, mask.height * k), Image.Resampling.NEAREST)
    else:
        new = (max(1, round(mask.width * scale)), max(1, round(mask.height * scale)))
        mask = mask.resize(new, Image.Resampling.LANCZOS)
    image = Image.new("RGB", (size, size), _background(rng))
    x = int(rng.integers(0, size - mask.width + 1))
    y = int(rng.integers(0, size - mask.height + 1))
    image.paste(_TEXT_INKS[int(rng.integers(len(_TEXT_INKS)))], (x, y), mask)
    return image, _question(rng, "ocr"), text


def _chart(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """3-4 bars in distinct colours on a baseline; the tallest beats every other bar by >= 20% of the axis."""
    n = int(rng.integers(3, 5))
    colours = _pick(rng, list(COLOURS), n)
    top = int(rng.integers(n))
    axis = size * 0.8
    heights = rng.uniform(0.15, 0.55, size=n)
    heights[top] = rng.uniform(0.78, 1.0)
    canvas = _Canvas(size, _background(rng))
    base, left, width = size * 0.9, size * 0.1, size * 0.8
    slot = width / n
    for j, (colour, h) in enumerate(zip(colours, heights)):
        x0 = left + j * slot + slot * 0.15
        canvas.rectangle((x0, base - h * axis, x0 + slot * 0.7, base), COLOURS[colour])
    canvas.rectangle((left - 1, base, left + width + 1, base + max(1.0, size / 32)), (90, 90, 90))
    return canvas.image(), _question(rng, "chart"), colours[top]


@functools.lru_cache(maxsize=1)
def _sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32) / 16.0, bunch.target.astype(np.int64)


@functools.cache
def digit_indices(split: str) -> np.ndarray:
    """The sklearn ``load_digits`` indices reserved for ``split``: a fixed permutation cut 70/10/20, disjoint."""
    _check_split(split)
    n = len(_sklearn_digits()[1])
    order = _rng("digits-partition").permutation(n)
    cuts = np.cumsum([round(n * _DIGIT_SPLIT_FRACTIONS[s]) for s in SPLITS])
    start = 0 if split == SPLITS[0] else int(cuts[SPLITS.index(split) - 1])
    stop = n if split == SPLITS[-1] else int(cuts[SPLITS.index(split)])
    return np.sort(order[start:stop])


@functools.lru_cache(maxsize=32)
def _digit_order(seed: int, split: str) -> np.ndarray:
    return _rng("digits-order", seed, split).permutation(digit_indices(split))


def _digits(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """A handwritten sklearn digit of ``row.split``'s pool (visited in a seeded order), upscaled and jittered."""
    images, targets = _sklearn_digits()
    order = _digit_order(row.seed, row.split)
    idx = int(order[row.index % len(order)])
    side = round(size * 0.8)
    ink = Image.fromarray((images[idx] * 255).round().astype(np.uint8), "L")
    ink = ink.resize((side, side), Image.Resampling.BILINEAR)
    image = Image.new("RGB", (size, size), _background(rng))
    x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    image.paste((0, 0, 0), (x, y), ink)
    return image, _question(rng, "digits"), str(int(targets[idx]))


_GENERATORS: dict[str, Callable[[np.random.Generator, int, _Row], Example]] = {
    "count": _count,
    "colour": _colour,
    "spatial": _spatial,
    "ocr": _ocr,
    "chart": _chart,
    "digits": _digits,
    "shape": _shape,
}
FAMILIES: tuple[str, ...] = tuple(_GENERATORS)

_ANSWERS: dict[str, tuple[str, ...]] = {
    "count": tuple(str(k) for k in range(1, 6)),
    "colour": tuple(COLOURS),
    "spatial": RELATIONS,
    "ocr": OCR_VOCAB,
    "chart": tuple(COLOURS),
    "digits": tuple(str(k) for k in range(10)),
    "shape": SHAPES,
}


# --------------------------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------------------------
def _check_family(family: str) -> None:
    if not isinstance(family, str) or family not in _GENERATORS:
        raise ValueError(f"unknown toy family {family!r}; valid families are: {', '.join(FAMILIES)}")


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits are: {', '.join(SPLITS)}")


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats are: {', '.join(FORMATS)}")


def _check_count(name: str, value: object, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def answer_space(family: str) -> list[str]:
    """The closed set of answers ``family`` can produce (canonical order), e.g. for exact-match eval or RL rewards."""
    _check_family(family)
    return list(_ANSWERS[family])


def corpus() -> list[str]:
    """Every question and answer string the world can produce (sorted, unique): enough to fit a tiny tokenizer."""
    texts: set[str] = set()
    for family in FAMILIES:
        texts.update(_ANSWERS[family])
        for template in TEMPLATES[family]:
            if "{a}" in template:
                texts.update(template.format(a=a, b=b) for a in SHAPES for b in SHAPES if a != b)
            else:
                texts.update(template.format(kind=kind) for kind in SHAPES)
    return sorted(texts)


def _parts():
    return datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")})


def _turns():
    return datasets.List({"role": datasets.Value("string"), "content": _parts()})


def features(fmt: str = "sft") -> datasets.Features:
    """The ``datasets.Features`` of toy rows in ``fmt`` (``"sft"``: messages; ``"rl"``: prompt + answer)."""
    _check_fmt(fmt)
    common = {
        "id": datasets.Value("string"),
        "source": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
    }
    if fmt == "sft":
        return datasets.Features({**common, "messages": _turns()})
    return datasets.Features({**common, "prompt": _turns(), "answer": datasets.Value("string")})


def _user_turn(question: str) -> dict:
    return {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]}


def make_source(
    family: str,
    n: int,
    split: str = "train",
    seed: int = 0,
    fmt: str = "sft",
    image_size: int = 32,
    source: str | None = None,
) -> datasets.Dataset:
    """``n`` rows of ``family`` in TRL's format.

    ``fmt="sft"``: ``{"id", "source", "images": [PIL], "messages": [user(image, question), assistant(answer)]}``.
    ``fmt="rl"``: ``{"id", "source", "images": [PIL], "prompt": [user(image, question)], "answer"}``.
    Every content part has both ``type`` and ``text`` keys (``text`` is None for image parts). ``id`` is
    ``f"{family}/{split}/{i}"`` and ``source`` defaults to ``family``. Row ``i`` depends only on
    ``(family, split, seed, image_size, i)``.
    """
    _check_family(family)
    _check_count("n", n)
    _check_split(split)
    _check_count("seed", seed)
    _check_fmt(fmt)
    _check_count("image_size", image_size, MIN_IMAGE_SIZE)
    n, seed, image_size = int(n), int(seed), int(image_size)
    generate = _GENERATORS[family]
    family_key = stable_int("toy", family, split)
    columns: dict[str, list] = {"id": [], "source": [], "images": []}
    turns: list = []
    answers: list[str] = []
    for i in range(n):
        rng = np.random.default_rng([seed, family_key, i])
        image, question, answer = generate(rng, image_size, _Row(seed, split, i))
        columns["id"].append(f"{family}/{split}/{i}")
        columns["images"].append([image])
        if fmt == "sft":
            turns.append([_user_turn(question), {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
        else:
            turns.append([_user_turn(question)])
            answers.append(answer)
    columns["source"] = [source if source is not None else family] * n
    if fmt == "sft":
        columns["messages"] = turns
    else:
        columns["prompt"], columns["answer"] = turns, answers
    return datasets.Dataset.from_dict(columns, features=features(fmt))


def make_world(
    n_train: int = 200,
    n_test: int = 50,
    seed: int = 0,
    fmt: str = "sft",
    families: Sequence[str] | None = None,
    image_size: int = 32,
) -> dict[str, datasets.DatasetDict]:
    """``{family: DatasetDict(train=..., test=...)}`` for ``families`` (default: all of :data:`FAMILIES`)."""
    families = FAMILIES if families is None else tuple(families)
    for family in families:  # validate everything before generating anything
        _check_family(family)
    return {
        family: datasets.DatasetDict(
            train=make_source(family, n_train, "train", seed, fmt, image_size),
            test=make_source(family, n_test, "test", seed, fmt, image_size),
        )
        for family in families
    }


def save_world(
    out_dir: str | pathlib.Path,
    n_train: int = 200,
    n_test: int = 50,
    seed: int = 0,
    fmt: str = "sft",
    families: Sequence[str] | None = None,
    image_size: int = 32,
) -> dict[str, pathlib.Path]:
    """Write :func:`make_world` as one ``DatasetDict.save_to_disk`` folder per source (``out_dir/<family>``)."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, pathlib.Path] = {}
    for family, dd in make_world(n_train, n_test, seed, fmt, families, image_size).items():
        paths[family] = out / family
        dd.save_to_disk(str(paths[family]))
    return paths


CORRUPT_IMAGE_BYTES = b"mixwise-toy: this is not an image\x00\xff"


def corrupt_rows(
    ds: datasets.Dataset, image_row: int | None = None, empty_answer_row: int | None = None
) -> datasets.Dataset:
    """A copy of ``ds`` with planted defects, for testing validators and loaders; the schema is unchanged.

    ``image_row``: every image of that row gets :data:`CORRUPT_IMAGE_BYTES` as its stored bytes. The row stays
    in the Arrow table, so ``len`` and the other rows are unaffected, but decoding it fails: ``ds[image_row]``,
    iterating past it, ``ds[a:b]`` covering it or ``ds["images"][image_row]`` raise ``PIL.UnidentifiedImageError``
    (an ``OSError``); columns without images (``ds.select_columns(["id", "messages"])``) still read fine.
    A validator can find such rows without raising by reading the raw bytes (:func:`image_bytes`, or
    ``ds.cast_column("images", datasets.List(datasets.Image(decode=False)))``) and trying ``PIL.Image.open``.
    Survives ``save_to_disk`` / ``load_from_disk``.

    ``empty_answer_row``: the answer of that row becomes ``""`` (SFT: the text of the last assistant turn;
    RL: the ``answer`` column). Negative indices count from the end; out of range raises ``IndexError``.
    """
    n = len(ds)

    def resolve(name: str, row: int | None) -> int | None:
        if row is None:
            return None
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"{name} must be an int or None, got {row!r}")
        if not -n <= row < n:
            raise IndexError(f"{name}={row} is out of range for a dataset of {n} rows")
        return int(row) % n

    bad_image, empty = resolve("image_row", image_row), resolve("empty_answer_row", empty_answer_row)
    if bad_image is None and empty is None:
        return ds.select(range(n))
    if empty is not None and "messages" not in ds.column_names and "answer" not in ds.column_names:
        raise ValueError("empty_answer_row needs a 'messages' (SFT) or 'answer' (RL) column")
    table = _arrow(ds)

    def replace(table: pa.Table, column: str, edit: Callable[[object], object], row: int) -> pa.Table:
        values = table.column(column).to_pylist()
        values[row] = edit(values[row])
        position = table.schema.get_field_index(column)
        return table.set_column(
            position, table.schema.field(position), pa.array(values, type=table.schema.field(position).type)
        )

    def empty_assistant(turns: list[dict]) -> list[dict]:
        for turn in reversed(turns):
            if turn["role"] == "assistant":
                turn["content"] = [{"type": "text", "text": ""}]
                return turns
        raise ValueError(f"row {empty} has no assistant turn to empty")

    if bad_image is not None:
        garbage = {"bytes": CORRUPT_IMAGE_BYTES, "path": None}
        table = replace(table, "images", lambda images: [dict(garbage) for _ in images], bad_image)
    if empty is not None:
        if "messages" in table.column_names:
            table = replace(table, "messages", empty_assistant, empty)
        else:
            table = replace(table, "answer", lambda _: "", empty)
    out = datasets.Dataset(InMemoryTable(table), info=ds.info.copy(), split=ds.split)
    fmt = ds.format
    return out.with_format(fmt["type"], fmt["columns"], fmt["output_all_columns"], **fmt["format_kwargs"])


def _arrow(ds: datasets.Dataset) -> pa.Table:
    """The rows of ``ds`` (indices mapping applied) as a pyarrow table, images still encoded."""
    return ds.with_format("arrow")[0 : len(ds)]


def image_bytes(ds: datasets.Dataset) -> list[list[bytes | None]]:
    """The stored (encoded) image bytes of every row, without decoding: handy for equality checks and validation."""
    return [[image["bytes"] for image in images] for images in _arrow(ds).column("images").to_pylist()]
