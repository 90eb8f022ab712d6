"""The mixture: a pool of sources laid end to end, and the plan that says what to draw from it.

`Mixture.dataset` is the concatenation of all sources (with a `source` column): that is what the trainer gets
as `train_dataset`. Which rows are actually trained on, and in what order, is decided by the current plan and
delivered by the [`~mixwise.sampler.MixtureSampler`]. Because the sampler reads the plan from the mixture when
an epoch starts, a callback can install a new plan in place after the dataloader exists.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from .fingerprint import stable_seed
from .plan import Plan
from .sources import SkipReport, Source, as_sources, validate_source


class Mixture:
    """A pool of named sources, a budget and the current plan.

    Args:
        sources: `{name: Dataset}` or a list of [`~mixwise.Source`].
        budget: number of rows one epoch trains on. A new plan must keep this budget (the trainer has already
            computed its number of steps from it).
        plan: the initial plan; uniform over sources by default.
        seed: default seed for drawing rows and shuffling (the trainer's `data_seed`/`seed` overrides it).
        source_column: name of the column that records each row's source in `dataset`.
        validate: check every row (format, Q/A, images) before use; `"raise"` (default), `"skip"` (drop and count
            bad rows, reported in the manifest) or `False`.
    """

    def __init__(
        self,
        sources: Mapping[str, datasets.Dataset] | Sequence[Source],
        budget: int,
        plan: Plan | None = None,
        seed: int = 0,
        source_column: str = "source",
        validate: str | bool = "raise",
        check_images: bool = True,
    ):
        self.sources = as_sources(sources)
        self.skipped: dict[str, Any] = {}
        if validate:
            checked = []
            for s in self.sources:
                s, report = validate_source(s, on_error=validate, check_images=check_images)
                checked.append(s)
                if report.skipped:
                    self.skipped[s.name] = report.to_dict()
            self.sources = checked
        self.seed = seed
        self.source_column = source_column
        self.names = [s.name for s in self.sources]
        self.sizes = {s.name: len(s) for s in self.sources}
        offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.offsets = {n: int(o) for n, o in zip(self.names, offsets[:-1])}
        self.total_size = int(offsets[-1])
        self._dataset: datasets.Dataset | None = None
        self._plan: Plan | None = None
        self._resolved: dict[int, list[dict[str, np.ndarray]]] = {}
        self.budget = int(budget)
        self.set_plan(plan if plan is not None else Plan.uniform(self.sizes, budget, seed=seed))

    # -- plan -----------------------------------------------------------------------------------------------------

    @property
    def plan(self) -> Plan:
        return self._plan

    def set_plan(self, plan: Plan) -> None:
        """Install a new plan. It must cover exactly this mixture's sources, sizes and budget."""
        if list(plan.sources) != self.names:
            missing = [n for n in self.names if n not in plan.sources]
            extra = [n for n in plan.sources if n not in self.sizes]
            if missing or extra:
                raise ValueError(
                    f"plan does not match the mixture: missing sources {missing}, unknown sources {extra}"
                )
            # Same names, other order: reorder so that streams do not depend on dict order.
            plan.sources = {n: plan.sources[n] for n in self.names}
        for n, sp in plan.sources.items():
            if sp.size != self.sizes[n]:
                raise ValueError(
                    f"plan was made for source '{n}' with {sp.size} rows, but the mixture's source has {self.sizes[n]}"
                )
        if plan.budget != self.budget:
            raise ValueError(
                f"plan budget {plan.budget} differs from the mixture's budget {self.budget}; the trainer has already "
                "sized its epochs from the budget, so a new plan must keep it"
            )
        if self.skipped and not plan.skipped:
            plan.skipped = dict(self.skipped)
        self._plan = plan
        self._resolved.clear()

    # -- rows -----------------------------------------------------------------------------------------------------

    def rows(self, seed: int | None = None) -> list[dict[str, np.ndarray]]:
        """Row ids per source (per stage) of the current plan, drawn once per seed and cached."""
        seed = self.seed if seed is None else seed
        if seed not in self._resolved:
            self._resolved[seed] = self._plan.resolve(seed)
        return self._resolved[seed]

    def indices(self, epoch: int = 0, seed: int | None = None) -> np.ndarray:
        """The epoch's stream of indices into `dataset`: each stage's rows shuffled by `(seed, epoch, stage)`.

        The same rows every epoch (the plan's), in a new order every epoch; stages keep their order.
        """
        seed = self.seed if seed is None else seed
        parts = []
        for k, stage in enumerate(self.rows(seed)):
            glob = np.concatenate([self.offsets[n] + r for n, r in stage.items()]) if stage else np.empty(0, np.int64)
            rng = np.random.default_rng(stable_seed(seed, "epoch", epoch, k))
            parts.append(glob[rng.permutation(len(glob))])
        return np.concatenate(parts)

    def locate(self, index: int) -> tuple[str, int]:
        """Map an index of `dataset` back to `(source name, row id)`."""
        starts = np.array([self.offsets[n] for n in self.names])
        k = int(np.searchsorted(starts, index, side="right")) - 1
        if index < 0 or index >= self.total_size:
            raise IndexError(f"index {index} out of range for a mixture of {self.total_size} rows")
        return self.names[k], int(index - starts[k])

    # -- data -----------------------------------------------------------------------------------------------------

    @property
    def dataset(self) -> datasets.Dataset:
        """All sources concatenated (no copy), with a `source` column: pass this as the trainer's `train_dataset`."""
        if self._dataset is None:
            parts = []
            for s in self.sources:
                ds = s.dataset
                if self.source_column in ds.column_names:
                    ds = ds.remove_columns(self.source_column)
                parts.append(ds.add_column(self.source_column, [s.name] * len(ds)))
            self._dataset = datasets.concatenate_datasets(parts)
        return self._dataset

    def fingerprints(self) -> dict[str, str]:
        return {s.name: s.fingerprint for s in self.sources}

    def __repr__(self) -> str:
        return f"Mixture(sources={self.sizes}, budget={self.budget}, method={self._plan.method!r})"


__all__ = ["Mixture", "SkipReport"]
