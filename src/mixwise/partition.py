"""MM-GEN step 1: partition a target's reference set into subgroups, and retrieve candidate images per subgroup.

MM-GEN (Joshi et al., 2025, "MM-GEN: Enhancing Task Performance Through Targeted Multimodal Data Curation",
arXiv:2501.04155) first splits a small reference set of the target task into subgroups, so that generation can be
targeted at each kind of image the task contains:

* **keywords** given by the user: every reference row goes to the keyword whose text embedding is most similar
  (cosine) to the row's image embedding — zero-shot assignment with an image–text encoder (the published code uses
  CLIP);
* **clustering** when no keywords are given: k-means (scikit-learn) on the L2-normalized image embeddings.

A subgroup's **share** is its fraction of the reference set; the generation budget is split across subgroups in
proportion to the shares with exact largest-remainder rounding ([`mixwise.plan.allocate`]). Candidate images for
a subgroup come from a user-given image pool (a folder or a dataset), ranked by cosine similarity to the subgroup's
query: its keyword's text embedding, or its cluster's centroid. Retrieval is *exclusive* and *exact*: all
(pool image, subgroup) pairs are visited from the most to the least similar, and a pair is taken when the image is
still free and the subgroup still needs images; so every subgroup gets exactly its count of its most similar
available images and no image is annotated for two subgroups. When the pool has fewer images than requested, the
images are used again in a further round with a new prompt variant (new in-context examples), and the retrieval
report says how many.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .plan import allocate
from .sources import DataError, as_pil, extract_fields
from .toy import COLOURS, SHAPES

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


# ----------------------------------------------------------------------------------------------------------------
# Encoders
# ----------------------------------------------------------------------------------------------------------------


@runtime_checkable
class ImageTextEncoder(Protocol):
    """Embeds images and texts into one space; rows are L2-normalized, so a dot product is a cosine."""

    name: str

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows divided by their L2 norm (a zero row stays zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


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
        vec = np.concatenate([w * l2_normalize(colour), (1.0 - w) * l2_normalize(shape)])
        return l2_normalize(vec)

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
        return l2_normalize(np.concatenate(chunks)) if chunks else np.zeros((0, 0), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            inputs = self.processor(text=batch, padding=True, truncation=True, return_tensors="pt").to(self.device)
            keep = {k: v for k, v in inputs.items() if k in ("input_ids", "attention_mask", "position_ids")}
            with self._torch.inference_mode():
                feats = self._features(self.model.get_text_features(**keep))
            chunks.append(feats.float().cpu().numpy())
        return l2_normalize(np.concatenate(chunks)) if chunks else np.zeros((0, 0), np.float32)


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


# ----------------------------------------------------------------------------------------------------------------
# Image pools
# ----------------------------------------------------------------------------------------------------------------


class ImagePool:
    """Candidate images with stable ids: a folder of image files, or a dataset with an image column.

    Images are decoded lazily ([`ImagePool.load`]), so a large pool is only read when embedded or annotated.
    """

    def __init__(self, ids: Sequence[str], loader: Any, name: str):
        if len(set(ids)) != len(ids):
            raise ValueError(f"image pool '{name}': image ids must be unique")
        self.ids = list(ids)
        self._loader = loader
        self.name = name

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, index: int) -> Image.Image:
        try:
            return as_pil(self._loader(index))
        except Exception as err:
            raise DataError(self.name, index, "images", f"cannot read image {self.ids[index]!r}: {err}") from err

    @classmethod
    def from_folder(cls, folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> ImagePool:
        """Every image file under `folder` (recursively, sorted); ids are paths relative to the folder."""
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {str(root)!r} does not exist")
        exts = {e.lower() for e in extensions}
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not files:
            raise ValueError(f"image folder {str(root)!r} holds no image files ({', '.join(sorted(exts))})")
        return cls([p.relative_to(root).as_posix() for p in files], lambda i: str(files[i]), name=str(root))

    @classmethod
    def from_dataset(
        cls,
        dataset: datasets.Dataset,
        name: str = "pool",
        id_column: str | None = "id",
        image_column: str | None = None,
    ) -> ImagePool:
        """The first image of every row of `dataset` (`images` list or `image` column); ids from `id_column` when
        present, else `f"{name}/{row}"`."""
        column = image_column or next((c for c in ("images", "image") if c in dataset.column_names), None)
        if column is None or column not in dataset.column_names:
            raise DataError(name, None, "images", f"no image column; columns are {dataset.column_names}")
        if id_column and id_column in dataset.column_names:
            ids = [str(i) for i in dataset[id_column]]
        else:
            ids = [f"{name}/{i}" for i in range(len(dataset))]
        images = dataset.select_columns([column])

        def load(i: int) -> Any:
            value = images[i][column]
            if isinstance(value, list | tuple):
                if not value:
                    raise DataError(name, i, column, "row has no image")
                value = value[0]
            if value is None:
                raise DataError(name, i, column, "row has no image")
            return value

        return cls(ids, load, name=name)

    def embed(self, encoder: ImageTextEncoder, batch_size: int = 256) -> np.ndarray:
        """L2-normalized image embeddings of the whole pool, `(len(pool), dim)`."""
        chunks = []
        for start in tqdm(range(0, len(self), batch_size), desc=f"embedding {self.name}", disable=len(self) < 2000):
            idx = range(start, min(start + batch_size, len(self)))
            chunks.append(np.asarray(encoder.embed_images([self.load(i) for i in idx]), dtype=np.float32))
        return l2_normalize(np.concatenate(chunks))


# ----------------------------------------------------------------------------------------------------------------
# Partition
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Subgroup:
    """One subgroup of the reference set.

    Attributes:
        name: the keyword, or `cluster_<k>` for a k-means cluster.
        members: row indices of the reference set assigned to it.
        share: `len(members) / len(reference)`.
        query: the L2-normalized embedding candidate images are ranked against (keyword text embedding, or the
            normalized centroid of the members' image embeddings).
        keyword: the user's keyword (None for clusters).
    """

    name: str
    members: list[int]
    share: float
    query: np.ndarray
    keyword: str | None = None


@dataclass
class Partition:
    """The reference set split into subgroups (MM-GEN step 1)."""

    subgroups: list[Subgroup]
    method: str  # "keywords" or "kmeans"
    assignment: np.ndarray  # subgroup index of every reference row
    scores: np.ndarray  # (rows, subgroups) cosine similarities (keywords) or negative distances (kmeans)
    encoder: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self.subgroups]

    @property
    def shares(self) -> dict[str, float]:
        return {g.name: g.share for g in self.subgroups}

    def counts(self, total: int) -> dict[str, int]:
        """`total` split across subgroups in proportion to their shares, exactly (largest remainder)."""
        return allocate({g.name: float(len(g.members)) for g in self.subgroups}, total)

    def __getitem__(self, name: str) -> Subgroup:
        for g in self.subgroups:
            if g.name == name:
                return g
        raise KeyError(f"no subgroup {name!r}; subgroups are {self.names}")

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (no embeddings)."""
        return {
            "method": self.method,
            "encoder": self.encoder,
            "config": self.config,
            "subgroups": {
                g.name: {"size": len(g.members), "share": g.share, "keyword": g.keyword} for g in self.subgroups
            },
        }


def reference_images(rows: datasets.Dataset | Sequence[Mapping[str, Any]], source: str = "reference") -> list[Any]:
    """The first image of every reference row (SFT or RL format); a row without one raises [`DataError`]."""
    out = []
    for i in range(len(rows)):
        fields = extract_fields(rows[i], source, i)
        if not fields.images:
            raise DataError(source, i, "images", "a reference row needs an image to be partitioned")
        out.append(fields.images[0])
    return out


def partition_reference(
    reference: datasets.Dataset | Sequence[Mapping[str, Any]],
    encoder: ImageTextEncoder,
    keywords: Sequence[str] | None = None,
    n_clusters: int = 4,
    keyword_template: str = "{keyword}",
    seed: int = 0,
    source: str = "reference",
    batch_size: int = 256,
) -> Partition:
    """Split a target's reference rows into subgroups (MM-GEN step 1).

    With `keywords`, every row goes to the keyword whose text embedding (`keyword_template` filled with the
    keyword, e.g. `"a photo of {keyword}"` for CLIP) has the highest cosine with the row's image embedding; ties go
    to the keyword listed first. A keyword may end up with no rows: it keeps share 0 and gets no budget. Without
    keywords, k-means (`n_clusters`, `n_init=10`, `random_state=seed`) on the image embeddings; clusters are
    named `cluster_0..` in order of their first member. Every row needs an image ([`DataError`] otherwise).
    """
    n = len(reference)
    if n == 0:
        raise ValueError(f"reference set '{source}' is empty")
    images = reference_images(reference, source)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc=f"embedding {source}", disable=n < 2000):
        batch = [as_pil(im) for im in images[start : start + batch_size]]
        chunks.append(np.asarray(encoder.embed_images(batch), dtype=np.float32))
    emb = l2_normalize(np.concatenate(chunks))
    config: dict[str, Any] = {"seed": seed, "source": source}
    if keywords:
        keywords = [str(k) for k in keywords]
        dupes = sorted({k for k in keywords if keywords.count(k) > 1})
        if dupes:
            raise ValueError(f"keywords must be unique; repeated: {dupes}")
        texts = l2_normalize(encoder.embed_texts([keyword_template.format(keyword=k) for k in keywords]))
        empty = [k for k, t in zip(keywords, texts) if not np.any(t)]
        if empty:
            raise ValueError(
                f"keywords {empty} embed to the zero vector with encoder '{encoder.name}' (no known concept); "
                "use words the encoder understands"
            )
        scores = emb @ texts.T
        assignment = np.argmax(scores, axis=1)  # first maximum: ties go to the keyword listed first
        queries, names, kws = list(texts), list(keywords), list(keywords)
        method = "keywords"
        config.update(keywords=list(keywords), keyword_template=keyword_template)
    else:
        from sklearn.cluster import KMeans

        k = int(n_clusters)
        if k < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if k > n:
            raise ValueError(f"n_clusters={k} exceeds the {n} reference rows of '{source}'")
        km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(emb)
        labels = km.labels_
        # Stable names: order clusters by their first member.
        order = sorted(range(k), key=lambda c: int(np.flatnonzero(labels == c)[0]) if (labels == c).any() else n)
        remap = {old: new for new, old in enumerate(order)}
        assignment = np.array([remap[int(c)] for c in labels])
        centres = km.cluster_centers_[order]
        scores = -np.linalg.norm(emb[:, None, :] - centres[None, :, :], axis=-1)
        queries = list(l2_normalize(centres))
        names = [f"cluster_{c}" for c in range(k)]
        kws = [None] * k
        method = "kmeans"
        config.update(n_clusters=k)
    subgroups = []
    for g, name in enumerate(names):
        members = np.flatnonzero(assignment == g).tolist()
        subgroups.append(Subgroup(name, members, len(members) / n, np.asarray(queries[g], np.float32), kws[g]))
    return Partition(subgroups, method, assignment, scores, getattr(encoder, "name", type(encoder).__name__), config)


# ----------------------------------------------------------------------------------------------------------------
# Retrieval
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One image to annotate for one subgroup. `variant` > 0 when the pool was too small and the image is used
    again (with other in-context examples)."""

    image_index: int
    image_id: str
    subgroup: str
    similarity: float
    variant: int = 0


@dataclass
class Retrieval:
    """Candidates per subgroup plus counts for the report."""

    candidates: dict[str, list[Candidate]]
    requested: dict[str, int]
    reused: int = 0  # candidates that reuse an image already taken (pool smaller than the request)
    off_preference: int = 0  # images taken by a subgroup other than their most similar one

    def summary(self) -> dict[str, Any]:
        return {
            "requested": dict(self.requested),
            "retrieved": {g: len(c) for g, c in self.candidates.items()},
            "reused": self.reused,
            "off_preference": self.off_preference,
        }


def retrieve_candidates(
    pool_embeddings: np.ndarray, pool_ids: Sequence[str], partition: Partition, counts: Mapping[str, int]
) -> Retrieval:
    """Exactly `counts[g]` candidate images for every subgroup `g`, most similar first (see module docstring).

    Greedy exclusive matching over all (image, subgroup) pairs in decreasing cosine similarity (ties: lower image
    index, then subgroup order). If the pool has fewer images than `sum(counts)`, further rounds reuse the images
    with `variant` 1, 2, ... in the same way.
    """
    names = partition.names
    unknown = [g for g in counts if g not in names]
    if unknown:
        raise ValueError(f"counts name unknown subgroups {unknown}; subgroups are {names}")
    m = len(pool_ids)
    if m == 0:
        raise ValueError("the image pool is empty")
    emb = l2_normalize(np.asarray(pool_embeddings, dtype=np.float32))
    if emb.shape[0] != m:
        raise ValueError(f"{emb.shape[0]} pool embeddings for {m} pool images")
    queries = np.stack([g.query for g in partition.subgroups])
    sims = emb @ queries.T  # (m, G)
    preferred = np.argmax(sims, axis=1)
    need = np.array([int(counts.get(g, 0)) for g in names])
    if (need < 0).any():
        raise ValueError(f"counts must be >= 0, got {dict(counts)}")
    # visit pairs by decreasing similarity; stable ordering gives lower image index, then subgroup order, on ties
    order = np.lexsort((np.tile(np.arange(len(names)), m), np.repeat(np.arange(m), len(names)), -sims.ravel()))
    out: dict[str, list[Candidate]] = {g: [] for g in names}
    reused = off = 0
    variant = 0
    need_left = [int(x) for x in need]
    remaining = sum(need_left)
    while remaining > 0:
        taken = np.zeros(m, dtype=bool)
        for flat in order.tolist():
            if remaining == 0:
                break
            i, g = divmod(flat, len(names))
            if taken[i] or need_left[g] == 0:
                continue
            taken[i] = True
            need_left[g] -= 1
            remaining -= 1
            out[names[g]].append(Candidate(i, pool_ids[i], names[g], float(sims[i, g]), variant))
            reused += variant > 0
            off += int(preferred[i] != g)
        variant += 1
    return Retrieval(out, {g: int(counts.get(g, 0)) for g in names}, reused=reused, off_preference=off)
