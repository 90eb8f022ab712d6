"""ICONS's configuration: the shared feature pipeline ([`mixwise.signals.features.FeatureConfig`]) plus the
aggregation. Also the `mixwise select --method icons` command line and YAML schema."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..signals.features import FeatureConfig
from .aggregation import AGGREGATORS

__all__ = ["ICONSConfig", "PRESETS", "PRESET_VALUES"]

PRESETS = ("default", "paper")
PRESET_VALUES: dict[str, dict[str, object]] = {
    "paper": {"dedup": False, "coverage_floor": 0.0, "answer_subtasks": False},
    "default": {"dedup": True, "coverage_floor": 0.5, "answer_subtasks": True},
}
"""The aggregation options of each preset. `paper`: ICONS's vote as published. `default`: duplicates counted once and
a per-task coverage floor, the values `benchmarks/selection_quality.py` chose (its RESULTS file has the ablation)."""


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
    preset: str = field(
        default="default",
        metadata={"help": "default (duplicates counted once, coverage floor) or paper (the published vote)."},
    )
    dedup: bool | None = field(
        default=None,
        metadata={
            "help": "Count duplicates once: pool rows whose gradient features have cosine >= dedup_threshold are one "
            "row (the others are selected only when the budget exceeds the distinct rows). None: from the preset."
        },
    )
    dedup_threshold: float = field(
        default=0.999, metadata={"help": "Cosine of two rows' features above which they are duplicates."}
    )
    coverage_floor: float | None = field(
        default=None,
        metadata={
            "help": "vote: the share of the budget filled first by a round robin over the targets, so that every "
            "target keeps floor(coverage_floor · M / K) of its own top rows (0: the paper's vote). None: from the "
            "preset."
        },
    )
    answer_subtasks: bool | None = field(
        default=None,
        metadata={
            "help": "Split a target with a closed answer space (at most max_answer_subtasks distinct answers) into one "
            "subtask per answer, max-merged like ICONS's subtasks, so that no answer class is left out of the "
            "selection. None: from the preset."
        },
    )
    max_answer_subtasks: int = field(
        default=16, metadata={"help": "A target with more distinct answers keeps one mean gradient."}
    )
    plots: bool = field(default=True, metadata={"help": "Write the vote histogram and the overlap heatmap."})

    def __post_init__(self):
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        for name, value in PRESET_VALUES[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if not 0.0 <= self.coverage_floor <= 1.0:
            raise ValueError(f"coverage_floor must be in [0, 1], got {self.coverage_floor}")
        if not 0.0 < self.dedup_threshold <= 1.0:
            raise ValueError(f"dedup_threshold must be in (0, 1], got {self.dedup_threshold}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.aggregator!r}; expected one of {AGGREGATORS}")
        if self.p_vote is not None and not 0 < self.p_vote <= 1:
            raise ValueError(f"p_vote must be in (0, 1], got {self.p_vote}")

    def to_dict(self):
        d = super().to_dict()
        d.pop("plots")
        return d
