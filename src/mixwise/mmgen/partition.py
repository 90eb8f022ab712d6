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

The image–text encoders live in [`mixwise.mmgen.encoders`].
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..plan import allocate
from ..signals.embeddings import l2_normalize
from ..sources import DataError, as_pil, extract_fields
from .encoders import ImageTextEncoder

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


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

    def raw(self, index: int) -> Any:
        """Image `index` as stored (a path, bytes dict or PIL image), undecoded."""
        return self._loader(index)

    def with_prefix(self, prefix: str) -> ImagePool:
        """The same images with ids `f"{prefix}/{id}"` (to keep ids of several folders apart)."""
        return ImagePool([f"{prefix}/{i}" for i in self.ids], self._loader, self.name)

    @classmethod
    def concat(cls, pools: Sequence[ImagePool]) -> ImagePool:
        """One pool over several (ids must not clash), images in pool order."""
        owners = [(p, j) for p in pools for j in range(len(p))]
        ids = [i for p in pools for i in p.ids]
        return cls(ids, lambda i: owners[i][0].raw(owners[i][1]), name="+".join(p.name for p in pools))

    def load(self, index: int) -> Image.Image:
        try:
            return as_pil(self.raw(index))
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
        return l2_normalize(np.concatenate(chunks), dtype=np.float32)


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
    emb = l2_normalize(np.concatenate(chunks), dtype=np.float32)
    config: dict[str, Any] = {"seed": seed, "source": source}
    if keywords:
        keywords = [str(k) for k in keywords]
        dupes = sorted({k for k in keywords if keywords.count(k) > 1})
        if dupes:
            raise ValueError(f"keywords must be unique; repeated: {dupes}")
        texts = l2_normalize(
            encoder.embed_texts([keyword_template.format(keyword=k) for k in keywords]), dtype=np.float32
        )
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
        queries = list(l2_normalize(centres, dtype=np.float32))
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
    emb = l2_normalize(pool_embeddings, dtype=np.float32)
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
