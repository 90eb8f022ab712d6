"""Multimodal perplexity over answer tokens: a per-sample signal, macro-averaged per dataset.

DataProphet (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1) measures how
surprising a dataset's answers are to the base model, given the image and the templated question::

    nll(u)  = −(1/|A_u|) Σ_{t ∈ A_u} log p(a_t | image, templated question, a_<t)      (per sample)
    PPL(D)  = exp( (1/|D|) Σ_{u ∈ D} nll(u) )                                            (macro mean, then exp)

Answer tokens only (the final assistant turn with its end-of-turn marker, located by [`mixwise.signals.encoding`]); a
mean inside each sample first, so that long answers do not dominate; then a mean over samples and `exp`. Rows
are encoded in right-padded batches, so a padded batch gives the same per-sample values as batch size 1.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..sources import DataError
from .encoding import answer_nll, encode_rows, forward_takes, to_model

__all__ = ["PerplexityConfig", "dataset_perplexity", "forward_nll", "sample_nll"]


@dataclass
class PerplexityConfig:
    """Attributes:
    batch_size: rows per forward pass (results do not depend on it).
    max_length: a row longer than this many tokens raises a `DataError` naming it (or is skipped, when the
        caller skips bad rows) rather than having its answer silently cut away; `None` = no limit.
    """

    batch_size: int = 8
    max_length: int | None = None

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")

    def key(self) -> dict[str, Any]:
        """What determines the values (for cache fingerprints): everything but the batch size."""
        d = asdict(self)
        d.pop("batch_size")
        return d


def _image_feature_keys(model: Any, inputs: Mapping[str, Any]) -> list[str] | None:
    """The batch keys to hand to `model.get_image_features`, or `None` when the model cannot take precomputed image
    features in its forward (`mm_encoder_outputs`)."""
    get = getattr(model, "get_image_features", None)
    if get is None or "pixel_values" not in inputs or not forward_takes(model, "mm_encoder_outputs"):
        return None
    params = inspect.signature(get).parameters
    return [k for k in inputs if k in params and k not in ("input_ids", "attention_mask")]


def forward_nll(model: Any, batch: Mapping[str, Any], image_features: bool = False) -> tuple[torch.Tensor, Any | None]:
    """Per-sample mean answer-token NLL of an [`encode_rows`] batch, in one forward pass.

    Logits are computed only at the positions that predict an answer token (`logits_to_keep` with a boolean mask,
    so the LM head — a large share of a small model's compute with a real vocabulary — runs on those rows only);
    models whose forward cannot take such a mask get the full logits, with the same result.

    With `image_features=True` the image pathway runs once, up front (`model.get_image_features`, with the vision
    tower's hidden states), and its output is passed to the forward as `mm_encoder_outputs`, so the image signal
    ([`mixwise.signals.embeddings.FieldEmbedder.image_vectors`]) costs no second pass. Returns `(nll, image_outputs)`;
    `image_outputs` is `None` when not asked for or when the model has no such input (then embed the images
    separately).
    """
    inputs = to_model(model, batch)
    labels = inputs.pop("labels")
    image_out = None
    keys = _image_feature_keys(model, inputs) if image_features else None
    with torch.no_grad():
        if keys is not None:
            image_out = model.get_image_features(
                **{k: inputs[k] for k in keys}, output_hidden_states=True, return_dict=True
            )
            inputs.pop("pixel_values")
            inputs["mm_encoder_outputs"] = {"image": image_out}
        nll, _ = answer_nll(model, inputs, labels)
    return nll.float().cpu(), image_out


def sample_nll(
    model: Any,
    processing_class: Any,
    rows: Sequence[Mapping[str, Any]],
    config: PerplexityConfig | None = None,
    source: str = "?",
    row_ids: Sequence[int] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Per-sample mean answer-token NLL (natural log) of `rows` under `model`, shape `(len(rows),)`.

    Args:
        rows: dataset rows in SFT or RL format (images decoded or as `datasets.Image` dicts).
        row_ids: the rows' ids in their dataset, for error messages (default `0..n-1`).
        source: the dataset's name, for error messages.

    Raises:
        DataError: naming the source, row and field (no assistant turn, an answer that renders to no tokens,
            a row over `max_length`, ...).
    """
    config = config or PerplexityConfig()
    rows = list(rows)
    row_ids = list(range(len(rows))) if row_ids is None else [int(i) for i in row_ids]
    if len(row_ids) != len(rows):
        raise ValueError(f"{len(row_ids)} row ids for {len(rows)} rows")
    out = np.empty(len(rows), dtype=np.float64)
    starts = range(0, len(rows), config.batch_size)
    for start in tqdm(starts, desc=f"perplexity {source}", disable=not progress, leave=False):
        chunk = rows[start : start + config.batch_size]
        try:
            batch = encode_rows(chunk, processing_class, max_length=config.max_length, source=source)
        except DataError as err:  # re-address the row by its id in the dataset
            row = row_ids[start + err.row] if err.row is not None else None
            raise DataError(source, row, err.field, err.problem) from None
        out[start : start + len(chunk)] = forward_nll(model, batch)[0].double().numpy()
    return out


def dataset_perplexity(nll: Sequence[float] | np.ndarray) -> float:
    """`PPL(D) = exp(mean over samples of the per-sample mean answer-token NLL)` (macro average, then exp)."""
    nll = np.asarray(nll, dtype=np.float64)
    if nll.size == 0:
        raise ValueError("perplexity of an empty set of samples")
    return float(math.exp(nll.mean()))
