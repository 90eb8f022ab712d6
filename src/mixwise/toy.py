"""A deterministic toy multimodal world with a known transfer structure: the library's embedded default data.

Each *family* is a tiny image-question-answer task with a short answer from a small closed set (:func:`answer_space`).
Images are drawn on a 4 x 4 grid of cells that coincides with the patch grid of the zoo's LLaVA (32 px images, 8 px
patches), and what a question asks about lies inside one cell or one aligned 2 x 2 block: the visual evidence is
local to patches, so a small VLM learns every family from a few hundred rows (a randomly initialised 0.36M-parameter
LLaVA trained on all families at once learns each of them; a layout that needs the *position* of a patch, e.g. "is
the circle left of the square", stayed at chance for it). Each family has a learning curve under the benchmarks'
fine-tuning recipe from the pre-trained toy base ([`mixwise.toybase`]); ``benchmarks/selection_quality.py`` checks it
before reporting anything.

- ``colour``: one big shape (2 x 2 cells) -> its colour, one of 8 (:data:`COLOURS`).
- ``chart``: 3-4 bars in distinct colours, one per column of cells; only the tallest reaches the top row -> its colour.
- ``shape``: one big shape (the ``colour`` generator) -> "circle" / "square" / "triangle" / "diamond" (:data:`SHAPES`).
- ``spatial``: an arrow inside one cell -> the direction it points to: "left" / "right" / "up" / "down".
- ``count``: 1-5 small identical shapes, one per cell -> "1" .. "5".
- ``ocr``: a printed digit (5 x 7 pixel font) inside one cell -> "0" .. "9" (:data:`OCR_VOCAB`).
- ``digits``: a real handwritten digit from ``sklearn.datasets.load_digits`` inside one cell (at 32 px its 8 x 8
  pixels are the cell's pixels) -> "0" .. "9".

**Transfer structure.** Families share *sub-skills* (:data:`SKILLS`): naming colours (``colour``, ``chart``),
recognising forms (``shape``, ``spatial``), reading digit glyphs (``ocr``, ``digits``) and answering with numerals
(``count``, ``ocr``, ``digits``). :func:`transfer_structure` turns them into the known source → target matrix (Jaccard
overlap of the skill sets, 1 on the diagonal): which source should help which target has a right answer, against
which a training-free metric's ranking is checked (``benchmarks/transfer_tau.py``). Questions come from a few
templates per family (:data:`TEMPLATES`; the first is canonical). The answer is a deterministic function of the image.

**Planted sources** for selection benchmarks: :func:`make_unrelated` (textured images with weather questions and
answers no family uses), :func:`mislabel` (all or a share of a dataset's answers replaced by a wrong answer of the same
space; the rows changed are returned) and :func:`duplicate` (a few distinct rows, each repeated exactly).

Everything is deterministic: row ``i`` of ``make_source(family, n, split, seed)`` is generated from its own
``numpy.random.default_rng`` seeded by ``(seed, family, split, i)`` through a stable (sha256) derivation, so the same
arguments give byte-identical images and text in any process, and a smaller ``n`` yields a prefix of a larger one.
Nothing is downloaded: shapes, charts, arrows and printed digits are drawn with PIL, handwritten digits come from
the copy bundled with scikit-learn (whose indices are split disjointly between train / validation / test).

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
from PIL import Image, ImageDraw

from .fingerprint import stable_int

__all__ = [
    "COLOURS",
    "FAMILIES",
    "FORMATS",
    "OCR_VOCAB",
    "SHAPES",
    "SKILLS",
    "SPLITS",
    "UNRELATED_ANSWERS",
    "answer_space",
    "corpus",
    "corrupt_rows",
    "digit_indices",
    "duplicate",
    "features",
    "image_bytes",
    "make_source",
    "make_unrelated",
    "make_world",
    "mislabel",
    "save_world",
    "transfer_structure",
]

FORMATS = ("sft", "rl")
SPLITS = ("train", "validation", "test")
MIN_IMAGE_SIZE = 16
GRID = 4  # cells per side: the patch grid of a 32 px image with 8 px patches

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
RELATIONS = ("left", "right", "up", "down")
OCR_VOCAB = tuple(str(d) for d in range(10))
UNRELATED_ANSWERS = ("sunny", "rainy", "cloudy", "windy")  # the answers of make_unrelated
_TEXT_INKS = ((0, 0, 0), (20, 20, 110), (110, 20, 20), (20, 90, 20))
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down: anti-aliased and recognisable at 32x32
_DIGIT_SPLIT_FRACTIONS = {"train": 0.7, "validation": 0.1, "test": 0.2}

# A 5 x 7 pixel font for the printed digits of ``ocr`` (one glyph fits one 8 px cell).
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("01110", "10001", "10011", "10101", "11001", "10001", "01110"),
    "1": ("00100", "01100", "00100", "00100", "00100", "00100", "01110"),
    "2": ("01110", "10001", "00001", "00010", "00100", "01000", "11111"),
    "3": ("11111", "00010", "00100", "00010", "00001", "10001", "01110"),
    "4": ("00010", "00110", "01010", "10010", "11111", "00010", "00010"),
    "5": ("11111", "10000", "11110", "00001", "00001", "10001", "01110"),
    "6": ("00110", "01000", "10000", "11110", "10001", "10001", "01110"),
    "7": ("11111", "00001", "00010", "00100", "01000", "01000", "01000"),
    "8": ("01110", "10001", "10001", "01110", "10001", "10001", "01110"),
    "9": ("01110", "10001", "10001", "01111", "00001", "00010", "01100"),
}

# Question templates; the first one is the canonical phrasing. Fields: {kind} ranges over SHAPES, {colour} over
# COLOURS.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "count": ("How many shapes are in the image?", "How many shapes are there?", "Count the shapes in the image."),
    "colour": ("What colour is the shape?", "What colour is the {kind}?", "Which colour is the shape in the image?"),
    "spatial": (
        "Which way does the arrow point?",
        "Does the {colour} arrow point left, right, up or down?",
        "In which direction does the arrow point?",
    ),
    "ocr": ("What digit is printed?", "Read the printed digit.", "Which digit is printed in the image?"),
    "chart": ("Which bar is the tallest?", "Which colour is the tallest bar?", "Which bar is the highest?"),
    "digits": ("Which digit is written?", "What digit is shown in the image?", "Which number is handwritten here?"),
    "shape": ("What shape is in the image?", "Which shape is shown?", "What kind of shape is this?"),
}
_UNRELATED_TEMPLATES = ("What is the weather like?", "How is the weather today?", "Describe the weather.")

SKILLS: dict[str, frozenset[str]] = {
    "colour": frozenset({"colour names"}),
    "chart": frozenset({"colour names", "comparing sizes"}),
    "shape": frozenset({"forms"}),
    "spatial": frozenset({"forms", "directions"}),
    "count": frozenset({"numerals", "counting"}),
    "ocr": frozenset({"numerals", "reading glyphs"}),
    "digits": frozenset({"numerals", "reading glyphs", "handwriting"}),
}
"""The sub-skills each family exercises: the world's known transfer structure (see :func:`transfer_structure`)."""


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

    def polygon(self, points: Sequence[tuple[float, float]], fill) -> None:
        self._draw.polygon([(x * _SUPERSAMPLE, y * _SUPERSAMPLE) for x, y in points], fill=fill)

    def rectangle(self, box: Sequence[float], fill) -> None:
        """Fill ``box`` = (x0, y0, x1, y1), the right and bottom edges excluded (PIL includes them)."""
        x0, y0, x1, y1 = (v * _SUPERSAMPLE for v in box)
        self._draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)

    def image(self) -> Image.Image:
        return self._img.resize((self.size, self.size), Image.Resampling.BOX)


def _jitter(rng: np.random.Generator, cell: float, amount: float = 0.08) -> tuple[float, float]:
    """A small offset (a fraction of a cell) that keeps a drawing inside its cells."""
    return tuple(float(v) for v in rng.uniform(-amount * cell, amount * cell, size=2))


# --------------------------------------------------------------------------------------------------------------------
# families: each returns (image, question, answer) from an rng
# --------------------------------------------------------------------------------------------------------------------
def _big_shape(rng: np.random.Generator, size: int) -> tuple[Image.Image, str, str]:
    """One shape spanning 2 x 2 cells at one of the 9 cell-aligned positions of the grid."""
    kind, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
    cell = size / GRID
    col, row = (int(v) for v in rng.integers(0, GRID - 1, size=2))
    dx, dy = _jitter(rng, cell)
    canvas = _Canvas(size, _background(rng))
    canvas.shape(kind, (col + 1) * cell + dx, (row + 1) * cell + dy, cell * 0.9, COLOURS[colour])
    return canvas.image(), kind, colour


def _colour(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """One big shape; the answer is its colour."""
    image, kind, colour = _big_shape(rng, size)
    return image, _question(rng, "colour", kind=kind), colour


def _shape(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """One big shape; the answer is its kind."""
    image, kind, _ = _big_shape(rng, size)
    return image, _question(rng, "shape"), kind


def _small_shape(canvas: _Canvas, rng: np.random.Generator, kind: str, cell_index: int, fill) -> None:
    """A shape inside one cell: radius a third of the cell, jitter 5% of it, so neighbours stay >= 1.5 px apart."""
    cell = canvas.size / GRID
    dx, dy = _jitter(rng, cell, 0.05)
    cx, cy = (cell_index % GRID + 0.5) * cell + dx, (cell_index // GRID + 0.5) * cell + dy
    canvas.shape(kind, cx, cy, cell * 0.33, fill)


def _count(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """1-5 small shapes of one kind and colour, each in its own cell of the grid (never touching)."""
    n = int(rng.integers(1, 6))
    kind, colour = _pick(rng, SHAPES), _pick(rng, list(COLOURS))
    canvas = _Canvas(size, _background(rng))
    for c in rng.choice(GRID * GRID, size=n, replace=False):
        _small_shape(canvas, rng, kind, int(c), COLOURS[colour])
    return canvas.image(), _question(rng, "count"), str(n)


_DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def _spatial(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """An arrow (shaft and head) inside one cell of the grid; the answer is the direction it points to."""
    direction, colour = _pick(rng, RELATIONS), _pick(rng, list(COLOURS))
    (ux, uy), cell = _DIRECTIONS[direction], size / GRID
    index = int(rng.integers(GRID * GRID))
    dx, dy = _jitter(rng, cell, 0.04)
    cx, cy, r = (index % GRID + 0.5) * cell + dx, (index // GRID + 0.5) * cell + dy, cell * 0.42
    vx, vy = -uy, ux  # perpendicular to the direction
    head = [(cx + ux * r, cy + uy * r), (cx + vx * r * 0.9, cy + vy * r * 0.9), (cx - vx * r * 0.9, cy - vy * r * 0.9)]
    w = r * 0.35
    shaft = [
        (cx + vx * w, cy + vy * w),
        (cx - vx * w, cy - vy * w),
        (cx - ux * r - vx * w, cy - uy * r - vy * w),
        (cx - ux * r + vx * w, cy - uy * r + vy * w),
    ]
    canvas = _Canvas(size, _background(rng))
    canvas.polygon(head, COLOURS[colour])
    canvas.polygon(shaft, COLOURS[colour])
    return canvas.image(), _question(rng, "spatial", colour=colour), direction


def _ocr(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """A printed digit (the 5 x 7 pixel font, one glyph pixel per image pixel at 32 px) inside one cell of the grid."""
    digit = _pick(rng, OCR_VOCAB)
    cell = size / GRID
    index = int(rng.integers(GRID * GRID))
    px = cell / 8  # one glyph pixel per image pixel at 32 px: the glyph is pixel-exact wherever it is drawn
    x0, y0 = (
        (index % GRID) * cell + px * int(rng.integers(0, 3)),
        (index // GRID) * cell + px * int(rng.integers(0, 2)),
    )
    px_w = px_h = px
    canvas = _Canvas(size, _background(rng))
    ink = _TEXT_INKS[int(rng.integers(len(_TEXT_INKS)))]
    for r, line in enumerate(_FONT[digit]):
        for c, bit in enumerate(line):
            if bit == "1":
                x, y = x0 + c * px_w, y0 + r * px_h
                canvas.rectangle((x, y, x + px_w, y + px_h), ink)
    return canvas.image(), _question(rng, "ocr"), digit


def _chart(rng: np.random.Generator, size: int, row: _Row) -> Example:
    """3-4 bars in distinct colours, one per column of cells; the tallest reaches the top row of cells, every other
    bar stays at least a cell lower."""
    n = int(rng.integers(3, 5))
    colours = _pick(rng, list(COLOURS), n)
    top = int(rng.integers(n))
    columns = sorted(int(c) for c in rng.choice(GRID, size=n, replace=False))
    heights = rng.uniform(0.2, 0.55, size=n)
    heights[top] = rng.uniform(0.85, 0.95)
    canvas = _Canvas(size, _background(rng))
    cell, base = size / GRID, size * 0.97
    for column, colour, h in zip(columns, colours, heights):
        x0 = column * cell + cell * 0.15
        canvas.rectangle((x0, base - h * size, x0 + cell * 0.7, base), COLOURS[colour])
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
    """A handwritten sklearn digit of ``row.split``'s pool (visited in a seeded order) inside one cell of the grid:
    at 32 px its 8 x 8 pixels are the cell's pixels."""
    images, targets = _sklearn_digits()
    order = _digit_order(row.seed, row.split)
    idx = int(order[row.index % len(order)])
    cell = size // GRID
    index = int(rng.integers(GRID * GRID))
    ink = Image.fromarray((images[idx] * 255).round().astype(np.uint8), "L")
    if cell != 8:
        ink = ink.resize((cell, cell), Image.Resampling.BILINEAR)
    image = Image.new("RGB", (size, size), _background(rng))
    image.paste(_TEXT_INKS[int(rng.integers(len(_TEXT_INKS)))], ((index % GRID) * cell, (index // GRID) * cell), ink)
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
            texts.update(template.format(kind=kind, colour=colour) for kind in SHAPES for colour in COLOURS)
    texts.update(UNRELATED_ANSWERS)
    texts.update(_UNRELATED_TEMPLATES)
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


def _dataset(examples: Sequence[tuple[str, Example]], fmt: str, source: str) -> datasets.Dataset:
    """Rows ``(id, (image, question, answer))`` laid out in ``fmt``."""
    columns: dict[str, list] = {"id": [], "source": [], "images": []}
    turns: list = []
    answers: list[str] = []
    for row_id, (image, question, answer) in examples:
        columns["id"].append(row_id)
        columns["images"].append([image])
        if fmt == "sft":
            turns.append([_user_turn(question), {"role": "assistant", "content": [{"type": "text", "text": answer}]}])
        else:
            turns.append([_user_turn(question)])
            answers.append(answer)
    columns["source"] = [source] * len(columns["id"])
    if fmt == "sft":
        columns["messages"] = turns
    else:
        columns["prompt"], columns["answer"] = turns, answers
    return datasets.Dataset.from_dict(columns, features=features(fmt))


def _check_common(n: int, split: str, seed: int, fmt: str, image_size: int) -> None:
    _check_count("n", n)
    _check_split(split)
    _check_count("seed", seed)
    _check_fmt(fmt)
    _check_count("image_size", image_size, MIN_IMAGE_SIZE)


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
    _check_common(n, split, seed, fmt, image_size)
    n, seed, image_size = int(n), int(seed), int(image_size)
    generate = _GENERATORS[family]
    family_key = stable_int("toy", family, split)
    examples = [
        (
            f"{family}/{split}/{i}",
            generate(np.random.default_rng([seed, family_key, i]), image_size, _Row(seed, split, i)),
        )
        for i in range(n)
    ]
    return _dataset(examples, fmt, source if source is not None else family)


_TEXTURES = {"stripes": "windy", "checks": "cloudy", "speckles": "rainy", "rings": "sunny"}


def _unrelated(rng: np.random.Generator, size: int) -> Example:
    """A full-frame texture in two random (non-palette) colours; the answer is a weather word tied to the texture."""
    texture = _pick(rng, list(_TEXTURES))
    a, b = (np.array([int(v) for v in rng.integers(40, 216, size=3)]) for _ in range(2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    period = float(rng.uniform(3.0, 7.0))
    phase = float(rng.uniform(0, 2 * np.pi))
    if texture == "stripes":
        mask = np.sin(2 * np.pi * (xx + yy * rng.uniform(-1, 1)) / period + phase) > 0
    elif texture == "checks":
        mask = ((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0
    elif texture == "speckles":
        mask = rng.random((size, size)) < 0.35
    else:
        cx, cy = rng.uniform(0, size, size=2)
        mask = np.sin(2 * np.pi * np.hypot(xx - cx, yy - cy) / period + phase) > 0
    pixels = np.where(mask[..., None], a, b).astype(np.uint8)
    question = _pick(rng, _UNRELATED_TEMPLATES)
    return Image.fromarray(pixels, "RGB"), question, _TEXTURES[texture]


def make_unrelated(
    n: int,
    split: str = "train",
    seed: int = 0,
    fmt: str = "sft",
    image_size: int = 32,
    source: str = "unrelated",
) -> datasets.Dataset:
    """``n`` rows unrelated to every family: full-frame textures (stripes, checks, speckles, rings) in non-palette
    colours, a weather question and a weather answer (:data:`UNRELATED_ANSWERS`, a function of the texture). Same
    formats and determinism as :func:`make_source`; ids are ``f"unrelated/{split}/{i}"``."""
    _check_common(n, split, seed, fmt, image_size)
    key = stable_int("toy", "unrelated", split)
    examples = [
        (f"unrelated/{split}/{i}", _unrelated(np.random.default_rng([int(seed), key, i]), int(image_size)))
        for i in range(int(n))
    ]
    return _dataset(examples, fmt, source)


def _answer_of(row: dict) -> str:
    if "answer" in row:
        return row["answer"]
    return row["messages"][-1]["content"][-1]["text"]


def mislabel(
    ds: datasets.Dataset,
    family: str,
    fraction: float = 1.0,
    seed: int = 0,
    source: str | None = None,
) -> tuple[datasets.Dataset, list[int]]:
    """A copy of ``ds`` (rows of ``family``) in which a seeded ``fraction`` of the rows (``round(fraction · n)``)
    get a wrong answer: another answer of ``family``'s space, drawn uniformly. Images, questions, ids and the schema
    are unchanged; ``source`` renames the ``source`` column. Returns ``(dataset, sorted ids of the changed rows)``.
    """
    _check_family(family)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    n = len(ds)
    rng = _rng("mislabel", family, int(seed), n)
    changed = sorted(int(i) for i in rng.choice(n, size=round(fraction * n), replace=False))
    space = _ANSWERS[family]
    rows = ds.to_list()
    for i in changed:
        old = _answer_of(rows[i])
        if old not in space:
            raise ValueError(f"row {i} ({rows[i]['id']}): answer {old!r} is not in the answer space of {family!r}")
        wrong = _pick(rng, [a for a in space if a != old])
        if "answer" in rows[i]:
            rows[i]["answer"] = wrong
        else:
            rows[i]["messages"][-1]["content"] = [{"type": "text", "text": wrong}]
    if source is not None:
        for r in rows:
            r["source"] = source
    return datasets.Dataset.from_list(rows, features=ds.features), changed


def duplicate(ds: datasets.Dataset, copies: int, source: str | None = None) -> datasets.Dataset:
    """Every row of ``ds`` repeated ``copies`` times in a row (row ``k`` of the result is row ``k // copies`` of
    ``ds``): exact duplicates, byte-identical images and text; ids get a ``#c`` suffix (c = copy number) so that they
    stay unique. ``source`` renames the ``source`` column."""
    _check_count("copies", copies, 1)
    rows = ds.to_list()
    out = []
    for r in rows:
        for c in range(int(copies)):
            out.append({**r, "id": f"{r['id']}#{c}", "source": source if source is not None else r["source"]})
    return datasets.Dataset.from_list(out, features=ds.features)


def transfer_structure(families: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """The world's known transfer structure: ``K[s, t] = |skills(s) ∩ skills(t)| / |skills(s) ∪ skills(t)|`` (Jaccard
    overlap of :data:`SKILLS`; 1 on the diagonal, symmetric). Returns ``(families, K)`` with rows the training source
    and columns the target, in the order given (default :data:`FAMILIES`)."""
    families = list(FAMILIES if families is None else families)
    for f in families:
        _check_family(f)
    k = np.array([[len(SKILLS[s] & SKILLS[t]) / len(SKILLS[s] | SKILLS[t]) for t in families] for s in families])
    return families, k


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
