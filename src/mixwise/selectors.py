"""The selector protocol and the trivial selectors.

A **selector** turns signals into a [`~mixwise.Plan`]. It has one method, `select(context) -> Plan`; the
[`SelectionContext`] gives it the mixture (sources, sizes, budget), the seed, and — when it runs inside a
trainer — the live model, its processor and the distributed state. Everything else (transforms, the callback,
the CLI) is built on that one method, so a new method plugs in by implementing it.

Selectors that score rows with a model should split the rows across processes with
[`mixwise.distributed.map_across_ranks`]; the callback then broadcasts the main process's plan so every rank
installs the identical one. Selectors are found by name in [`mixwise.registry.SELECTORS`].
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .fingerprint import stable_seed
from .mixture import Mixture
from .plan import Plan


@dataclass
class SelectionContext:
    """What a selector may use.

    Attributes:
        mixture: the pool (sources, sizes, offsets) and the budget.
        seed: the run's seed.
        model: the live model (inside a trainer) or `None` (e.g. a selector that needs none, or the CLI, which
            loads its own).
        processing_class: the model's processor or tokenizer.
        targets: named target datasets (validation sets to get better at), for methods that need them.
        model_id: a stable identifier of the model (path or hub id, plus revision) for fingerprints.
    """

    mixture: Mixture
    seed: int = 0
    model: Any = None
    processing_class: Any = None
    targets: dict[str, Any] = field(default_factory=dict)
    model_id: str | None = None

    @property
    def budget(self) -> int:
        return self.mixture.budget

    @property
    def sizes(self) -> dict[str, int]:
        return dict(self.mixture.sizes)


@runtime_checkable
class Selector(Protocol):
    """Anything with a `name` and `select(context) -> Plan` is a selector."""

    name: str

    def select(self, context: SelectionContext) -> Plan: ...


def plan_kwargs(selector: Any, context: SelectionContext) -> dict[str, Any]:
    """The manifest fields every selector's plan carries: `method`, `seed`, `config`, data and model fingerprints and
    the rows validation skipped. Pass them to `Plan.from_weights` / `from_rows` / `staged`."""
    return {
        "method": selector.name,
        "seed": context.seed,
        "config": selector.config(),
        "fingerprints": {"data": context.mixture.fingerprints(), "model": context.model_id},
        "skipped": dict(context.mixture.skipped),
    }


class Uniform:
    """Equal weight per source (the baseline every method is compared against)."""

    name = "uniform"

    def config(self) -> dict[str, Any]:
        return {}

    def select(self, context: SelectionContext) -> Plan:
        return Plan.uniform(context.sizes, context.budget, **plan_kwargs(self, context))


class FixedWeights:
    """User-given per-source weights (normalized; a zero weight excludes a source)."""

    name = "fixed_weights"

    def __init__(self, weights: Mapping[str, float]):
        self.weights = dict(weights)

    def config(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def select(self, context: SelectionContext) -> Plan:
        unknown = [n for n in self.weights if n not in context.sizes]
        if unknown:
            raise ValueError(f"weights name unknown sources {unknown}; the pool has {list(context.sizes)}")
        weights = {n: self.weights.get(n, 0.0) for n in context.sizes}
        return Plan.from_weights(weights, context.sizes, context.budget, **plan_kwargs(self, context))


class RandomSubset:
    """A uniformly random subset of the whole pool (rows, not sources), `budget` rows, without replacement.

    Sources are represented in proportion to their sizes in expectation; this is the "random 20%" baseline of
    ICONS.
    """

    name = "random"

    def config(self) -> dict[str, Any]:
        return {}

    def select(self, context: SelectionContext) -> Plan:
        mixture = context.mixture
        if context.budget > mixture.total_size:
            raise ValueError(
                f"random subset of {context.budget} rows requested from a pool of {mixture.total_size} rows"
            )
        rng = np.random.default_rng(stable_seed(context.seed, "random-subset"))
        picked = np.sort(rng.choice(mixture.total_size, size=context.budget, replace=False))
        rows: dict[str, list[int]] = {n: [] for n in mixture.names}
        for n in mixture.names:
            lo, hi = mixture.offsets[n], mixture.offsets[n] + mixture.sizes[n]
            sel = picked[(picked >= lo) & (picked < hi)] - lo
            rows[n] = sel.tolist()
        return Plan.from_rows(rows, context.sizes, **plan_kwargs(self, context))


__all__ = ["FixedWeights", "RandomSubset", "SelectionContext", "Selector", "Uniform", "plan_kwargs"]
