"""MM-GEN's image–text encoders: embed images and texts into one space (subgroup assignment and retrieval).

The encoder is pluggable ([`ImageTextEncoder`]: `embed_images`, `embed_texts`, both returning L2-normalized rows
in one shared space):

* [`TransformersImageTextEncoder`] loads any dual encoder with `get_image_features` / `get_text_features` (CLIP,
  SigLIP, ...) and its processor from a local directory;
* [`FixedFeatureEncoder`] is deterministic and training-free: images map to colour and shape features, texts to
  the same concepts through a keyword lexicon. It needs no weights, so tests and the embedded demo use it; it
  understands the toy world's colours and shapes and nothing else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from ..signals.embeddings import l2_normalize
from ..sources import as_pil
from ..toy import COLOURS, SHAPES


@runtime_checkable
class ImageTextEncoder(Protocol):
    """Embeds images and texts into one space; rows are L2-normalized, so a dot product is a cosine."""

    name: str

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


# Concepts of the fixed encoder: the toy world's palette and shapes (see `mixwise.toy`).
_PALETTE: dict[str, tuple[int, int, int]] = COLOURS
_SHAPES = SHAPES
_SYNONYMS: dict[str, str] = {
    "crimson": "red",
    "scarlet": "red",
    "amber": "orange",
    "gold": "yellow",
    "lime": "green",
    "navy": "blue",
    "azure": "blue",
    "violet": "purple",
    "magenta": "pink",
    "rose": "pink",
    "dark": "black",
    "round": "circle",
    "disc": "circle",
    "disk": "circle",
    "ring": "circle",
    "box": "square",
    "rectangle": "square",
    "triangular": "triangle",
    "rhombus": "diamond",
    "lozenge": "diamond",
}


class FixedFeatureEncoder:
    """A deterministic, training-free image–text encoder over colour and shape concepts (tests and demos).

    The space has one dimension per concept: the 8 colours of the toy palette (`red`, `orange`, `yellow`, `green`,
    `blue`, `purple`, `pink`, `black`) and 4 shapes (`circle`, `square`, `triangle`, `diamond`).

    * **Images.** Foreground pixels are those not near-white (the toy world draws on near-white backgrounds). The
      colour block is a soft histogram: each foreground pixel adds `exp(−d²/σ²)` to every palette colour at RGB
      distance `d` (σ = `colour_sigma`), so an orange shape is also a little red and yellow. The shape block comes
      from each connected foreground blob of at least `min_blob` pixels: the fraction of its bounding box it fills
      (circle π/4, square 1, triangle and diamond 1/2) and how far its centre of mass sits below the box centre
      (triangle 1/6, diamond 0), scored with Gaussian kernels and averaged over blobs. Images larger than
      `max_side` pixels are first shrunk to it (box filter). Each block is
      L2-normalized, the two are concatenated with weights `colour_weight` and `1 − colour_weight`, then the whole
      vector is L2-normalized.
    * **Texts.** Lower-cased words (a plural `s` stripped) are looked up in a lexicon of the concept names and a
      few synonyms (`crimson` → red, `round` → circle, ...); the text's vector is the normalized sum of its
      concepts' one-hot vectors, colour and shape blocks weighted like the images'. A text without any known
      concept embeds to the zero vector (its cosine with everything is 0); [`partition_reference`] rejects such
      keywords by name.

    It is exact on the toy world's single-shape images and meaningless on natural images: use
    [`TransformersImageTextEncoder`] with a real CLIP-like model there.
    """

    name = "fixed-colour-shape"

    def __init__(
        self,
        colour_sigma: float = 40.0,
        colour_weight: float = 0.5,
        background_min: int = 200,
        min_blob: int = 12,
        max_side: int = 128,
    ):
        if not 0.0 <= colour_weight <= 1.0:
            raise ValueError(f"colour_weight must be in [0, 1], got {colour_weight}")
        self.colour_sigma = float(colour_sigma)
        self.colour_weight = float(colour_weight)
        self.background_min = int(background_min)
        self.min_blob = int(min_blob)
        self.max_side = int(max_side)
        self.concepts: tuple[str, ...] = (*_PALETTE, *_SHAPES)
        self._palette = np.array(list(_PALETTE.values()), dtype=np.float32)
        self._lexicon = {c: c for c in self.concepts} | dict(_SYNONYMS)

    @property
    def dim(self) -> int:
        return len(self.concepts)

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "colour_sigma": self.colour_sigma,
            "colour_weight": self.colour_weight,
            "background_min": self.background_min,
            "min_blob": self.min_blob,
            "max_side": self.max_side,
        }

    def _combine(self, colour: np.ndarray, shape: np.ndarray) -> np.ndarray:
        w = self.colour_weight
        vec = np.concatenate(
            [w * l2_normalize(colour, dtype=np.float32), (1.0 - w) * l2_normalize(shape, dtype=np.float32)]
        )
        return l2_normalize(vec, dtype=np.float32)

    def _image_vector(self, image: Image.Image) -> np.ndarray:
        from scipy import ndimage

        image = as_pil(image)
        if max(image.size) > self.max_side:  # bound the cost on large natural images
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side), Image.Resampling.BOX)
        pixels = np.asarray(image, dtype=np.float32)
        foreground = pixels.min(axis=-1) < self.background_min
        colour = np.zeros(len(self._palette), dtype=np.float32)
        shape = np.zeros(len(_SHAPES), dtype=np.float32)
        if not foreground.any():
            return np.zeros(self.dim, dtype=np.float32)
        fg = pixels[foreground]
        d2 = ((fg[:, None, :] - self._palette[None, :, :]) ** 2).sum(-1)
        colour = np.exp(-d2 / self.colour_sigma**2).sum(0) / len(fg)
        labels, n = ndimage.label(foreground)
        scores = []
        for k in range(1, n + 1):
            ys, xs = np.nonzero(labels == k)
            if len(ys) < self.min_blob:
                continue
            h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
            fill = len(ys) / float(h * w)
            drop = (ys.mean() - (ys.min() + ys.max()) / 2.0) / h
            scores.append(
                [
                    np.exp(-(((fill - np.pi / 4) / 0.08) ** 2)) * np.exp(-((drop / 0.06) ** 2)),
                    np.exp(-(((fill - 1.0) / 0.1) ** 2)) * np.exp(-((drop / 0.06) ** 2)),
                    np.exp(-(((fill - 0.5) / 0.12) ** 2)) * np.exp(-(((drop - 1 / 6) / 0.06) ** 2)),
                    np.exp(-(((fill - 0.5) / 0.12) ** 2)) * np.exp(-((drop / 0.06) ** 2)),
                ]
            )
        if scores:
            shape = np.mean(np.array(scores, dtype=np.float32), axis=0)
        return self._combine(colour, shape)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not len(images):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._image_vector(im) for im in images])

    def text_concepts(self, text: str) -> list[str]:
        """The concepts a text names, in order of appearance (duplicates kept)."""
        out = []
        for word in re.findall(r"[a-z]+", text.lower()):
            concept = self._lexicon.get(word) or (self._lexicon.get(word[:-1]) if word.endswith("s") else None)
            if concept is not None:
                out.append(concept)
        return out

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        n_colours = len(self._palette)
        for i, text in enumerate(texts):
            hits = np.zeros(self.dim, dtype=np.float32)
            for concept in self.text_concepts(text):
                hits[self.concepts.index(concept)] += 1.0
            if hits.any():
                out[i] = self._combine(hits[:n_colours], hits[n_colours:])
        return out


class TransformersImageTextEncoder:
    """A dual image–text encoder from a local directory: any transformers model with `get_image_features` and
    `get_text_features` (CLIP, SigLIP, ...) plus its processor, loaded with `AutoModel` / `AutoProcessor`.

    Embeddings are the model's projected features, L2-normalized. Nothing is downloaded: `path` must be a directory
    (or a name already in the local Hugging Face cache with `HF_HUB_OFFLINE=1`).
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu", batch_size: int = 64, dtype: Any = None):
        import torch
        from transformers import AutoModel, AutoProcessor

        self.path = os.fspath(path)
        self.name = f"transformers:{self.path}"
        self.device = device
        self.batch_size = int(batch_size)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        self.model = AutoModel.from_pretrained(self.path, **kwargs).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(self.path)
        for method in ("get_image_features", "get_text_features"):
            if not hasattr(self.model, method):
                raise TypeError(
                    f"model at {self.path!r} ({type(self.model).__name__}) has no {method}(); an image–text encoder "
                    "needs a dual encoder such as CLIP or SigLIP"
                )
        self._torch = torch

    def config(self) -> dict[str, Any]:
        return {"name": self.name}

    @staticmethod
    def _features(output: Any) -> Any:
        # transformers 5 returns a model output whose pooler_output holds the projected features; 4.x a tensor.
        return output if hasattr(output, "shape") else output.pooler_output

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), self.batch_size):
            batch = [as_pil(im) for im in images[start : start + self.batch_size]]
            inputs = self.processor(images=batch, return_tensors="pt").to(self.device)
            with self._torch.inference_mode():
                feats = self._features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))
            chunks.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(chunks), dtype=np.float32) if chunks else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            inputs = self.processor(text=batch, padding=True, truncation=True, return_tensors="pt").to(self.device)
            keep = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            with self._torch.inference_mode():
                feats = self._features(self.model.get_text_features(**keep))
            chunks.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(chunks), dtype=np.float32) if chunks else np.zeros((0, 0), np.float32)


def load_encoder(spec: str | ImageTextEncoder | None) -> ImageTextEncoder:
    """`"fixed"` (or None) → [`FixedFeatureEncoder`]; a directory path → [`TransformersImageTextEncoder`]."""
    if spec is None or spec == "fixed":
        return FixedFeatureEncoder()
    if isinstance(spec, str):
        if not os.path.isdir(spec):
            raise FileNotFoundError(
                f"image–text encoder {spec!r}: not 'fixed' and not a local directory (nothing is downloaded; save a "
                "CLIP-like model with save_pretrained and give its path)"
            )
        return TransformersImageTextEncoder(spec)
    if not isinstance(spec, ImageTextEncoder):
        raise TypeError(f"expected an ImageTextEncoder, 'fixed' or a model directory, got {type(spec).__name__}")
    return spec
