"""Multimodal perplexity over answer tokens: a per-sample signal, macro-averaged per dataset.

DataProphet (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1) measures how
surprising a dataset's answers are to the base model, given the image and the templated question::

    nll(u)  = −(1/|A_u|) Σ_{t ∈ A_u} log p(a_t | image, templated question, a_<t)      (per sample)
    PPL(D)  = exp( (1/|D|) Σ_{u ∈ D} nll(u) )                                            (macro mean, then exp)

Answer tokens only (the final assistant turn with its end-of-turn marker, located by [`mixwise.encoding`]); a
mean inside each sample first, so that long answers do not dominate; then a mean over samples and `exp`. Rows
are encoded in right-padded batches, so a padded batch gives the same per-sample values as batch size 1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .encoding import encode_rows, per_sample_nll
from .sources import DataError

__all__ = ["PerplexityConfig", "dataset_perplexity", "sample_nll"]


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


def _forward_nll(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    p = next(model.parameters())
    labels = batch.pop("labels")
    inputs = {
        k: (v.to(p.device, p.dtype) if torch.is_floating_point(v) else v.to(p.device))
        for k, v in batch.items()
        if isinstance(v, torch.Tensor)
    }
    with torch.no_grad():
        logits = model(**inputs).logits
    return per_sample_nll(logits, labels.to(logits.device)).float().cpu()


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
        out[start : start + len(chunk)] = _forward_nll(model, batch).double().numpy()
    return out


def dataset_perplexity(nll: Sequence[float] | np.ndarray) -> float:
    """`PPL(D) = exp(mean over samples of the per-sample mean answer-token NLL)` (macro average, then exp)."""
    nll = np.asarray(nll, dtype=np.float64)
    if nll.size == 0:
        raise ValueError("perplexity of an empty set of samples")
    return float(math.exp(nll.mean()))
