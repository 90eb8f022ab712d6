"""CADC's configuration: the shared feature pipeline ([`mixwise.signals.features.FeatureConfig`]; CADC always uses
every warm-up checkpoint's gradient features) plus discovery and curation. Also the `mixwise select --method cadc`
command line and YAML schema. Decisions marked **(assumed)** are ours (only the abstract and captions are public)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from ..signals.features import FeatureConfig

__all__ = ["BUDGET_SPLITS", "STAGE_ORDERS", "CADCConfig"]

BUDGET_SPLITS = ("equal", "proportional", "custom")
STAGE_ORDERS = ("fastest_drop", "slowest_drop", "index")


@dataclass
class CADCConfig(FeatureConfig):
    """Configuration of the CADC selector: the feature pipeline's fields (see `FeatureConfig`; the warm-up defaults
    to the LESS preset, a checkpoint per epoch, so that subtasks have trajectories) and the fields below."""

    warmup_preset: str = field(
        default="less",
        metadata={"help": "Warm-up preset (default less: 4 epochs, a checkpoint each, a trajectory of T=4)."},
    )
    threshold: float = field(
        default=0.0, metadata={"help": "Similarity-graph edge threshold on cos(τ_a, τ_b) (assumed default 0.0)."}
    )
    resolution: float = field(
        default=1.0, metadata={"help": "Louvain resolution (higher: more, smaller capabilities)."}
    )
    n_capabilities: int | None = field(
        default=None, metadata={"help": "Fix K (agglomerative clustering on 1 − S); default: Louvain finds K."}
    )
    community_seed: int = field(default=0, metadata={"help": "Louvain's seed."})
    block_normalize: bool = field(
        default=True, metadata={"help": "Unit-normalise each checkpoint block of a trajectory (assumed)."}
    )
    subtasks: dict[str, list[str]] | str | None = field(
        default=None,
        metadata={"help": "JSON {target: [expected subtask names]}; a listed subtask without rows is an error."},
    )
    budget_split: str = field(
        default="equal", metadata={"help": "Budget per capability: equal, proportional, custom."}
    )
    budget_weights: dict[str, float] | str | None = field(
        default=None, metadata={"help": "custom: JSON {capability: weight} (or a list in capability order)."}
    )
    stage_order: str = field(
        default="fastest_drop",
        metadata={
            "help": "fastest_drop (assumed), slowest_drop, index, or capability names in order ('c1,c0'; the API "
            "also takes a list)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.signal != "gradient" or self.checkpoints != "all":
            raise ValueError(
                "CADC uses the gradient features of every warm-up checkpoint (signal=gradient, checkpoints=all)"
            )
        for name in ("subtasks", "budget_weights"):
            value = getattr(self, name)
            if isinstance(value, str):
                setattr(self, name, json.loads(value))
        if (
            isinstance(self.stage_order, list | tuple)
            and len(self.stage_order) == 1
            and self.stage_order[0] in STAGE_ORDERS
        ):
            self.stage_order = self.stage_order[0]  # one value from the command line
        if self.budget_split not in BUDGET_SPLITS:
            raise ValueError(f"budget_split must be one of {BUDGET_SPLITS}, got {self.budget_split!r}")
        if self.budget_split == "custom" and self.budget_weights is None:
            raise ValueError("budget_split='custom' needs budget_weights")
        if isinstance(self.stage_order, str) and self.stage_order not in STAGE_ORDERS:
            raise ValueError(f"stage_order must be one of {STAGE_ORDERS} or a list of capabilities")
        if self.n_capabilities is not None and self.n_capabilities < 1:
            raise ValueError(f"n_capabilities must be >= 1, got {self.n_capabilities}")
