"""ICONS's configuration: the shared feature pipeline ([`mixwise.signals.features.FeatureConfig`]) plus the
aggregation. Also the `mixwise select --method icons` command line and YAML schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..signals.features import FeatureConfig
from .aggregation import AGGREGATORS

__all__ = ["ICONSConfig"]


@dataclass
class ICONSConfig(FeatureConfig):
    """Configuration of the ICONS selector (defaults follow the ICONS paper): the feature pipeline's fields (warm-up,
    gradient mode, projection, datastores; see `FeatureConfig`) and how the per-task influence becomes one
    selection."""

    aggregator: str = field(
        default="vote",
        metadata={"help": "vote (ICONS), merge, max, gausnorm, sumnorm, round_robin, min_rank or specialist."},
    )
    p_vote: float | None = field(
        default=None, metadata={"help": "Share of the pool each task votes for (default: the selection ratio)."}
    )
    specialist_task: str | None = field(default=None, metadata={"help": "The task of the specialist aggregator."})
    sumnorm_guard: float = field(
        default=1e-3, metadata={"help": "sumnorm refuses tasks whose influence sum is not above guard · Σ|I|."}
    )
    plots: bool = field(default=True, metadata={"help": "Write the vote histogram and the overlap heatmap."})

    def __post_init__(self):
        super().__post_init__()
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.aggregator!r}; expected one of {AGGREGATORS}")
        if self.p_vote is not None and not 0 < self.p_vote <= 1:
            raise ValueError(f"p_vote must be in (0, 1], got {self.p_vote}")

    def to_dict(self):
        d = super().to_dict()
        d.pop("plots")
        return d
