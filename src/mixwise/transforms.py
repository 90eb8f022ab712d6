"""`datasets` transforms: apply a plan, or add score columns — each with an explicit deterministic fingerprint.

`datasets` fingerprints a transform by hashing the function and everything it closes over. With a model
inside that is slow, and when something is unpicklable it falls back to a *random* fingerprint, which silently
disables caching. mixwise transforms pass `new_fingerprint` computed from what determines the result: the
transform's name and configuration, the model id/revision, the input's fingerprint and the library version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import datasets

from .fingerprint import transform_fingerprint
from .mixture import Mixture
from .plan import Plan
from .selectors import SelectionContext, Selector
from .sources import Source


def apply_plan(
    mixture: Mixture, plan: Plan | None = None, seed: int | None = None, epoch: int = 0
) -> datasets.Dataset:
    """The materialized mixture: exactly the plan's rows (budget-sized), in the sampler's order for `epoch`.

    The result has a `source` column. With `plan`, it is first installed in the mixture. The rows equal what
    [`~mixwise.MixtureSampler`] draws for the same seed and epoch, so training on this dataset sequentially is
    training on the plan.
    """
    if plan is not None:
        mixture.set_plan(plan)
    seed = mixture.seed if seed is None else seed
    indices = mixture.indices(epoch=epoch, seed=seed)
    fp = transform_fingerprint(
        "apply_plan",
        {"plan": mixture.plan.to_dict(), "seed": seed, "epoch": epoch},
        None,
        mixture.dataset._fingerprint,
    )
    return mixture.dataset.select(indices, new_fingerprint=fp)


def select_mixture(
    sources: Mapping[str, datasets.Dataset] | Sequence[Source],
    selector: Selector,
    budget: int,
    seed: int = 0,
    model: Any = None,
    processing_class: Any = None,
    targets: Mapping[str, Any] | None = None,
    model_id: str | None = None,
    validate: str | bool = "raise",
) -> tuple[datasets.Dataset, Plan]:
    """Run `selector` on a pool and return `(budget-sized mixture with a source column, plan)`."""
    mixture = Mixture(sources, budget=budget, seed=seed, validate=validate)
    context = SelectionContext(
        mixture=mixture,
        seed=seed,
        model=model,
        processing_class=processing_class,
        targets=dict(targets or {}),
        model_id=model_id,
    )
    plan = selector.select(context)
    return apply_plan(mixture, plan, seed=seed), plan


@runtime_checkable
class Scorer(Protocol):
    """Computes score columns for a batch of rows. `config()` and `model_id` determine the fingerprint."""

    name: str
    columns: tuple[str, ...]
    model_id: str | None

    def config(self) -> dict[str, Any]: ...

    def __call__(self, batch: dict[str, list[Any]], indices: list[int]) -> dict[str, list[Any]]: ...


def add_scores(
    dataset: datasets.Dataset,
    scorer: Scorer,
    batch_size: int = 64,
    load_from_cache_file: bool | None = None,
    desc: str | None = None,
) -> datasets.Dataset:
    """Add `scorer.columns` to `dataset` with `Dataset.map` and an explicit fingerprint (so caching works)."""
    fp = transform_fingerprint(scorer.name, scorer.config(), scorer.model_id, dataset._fingerprint)
    return dataset.map(
        scorer,
        batched=True,
        batch_size=batch_size,
        with_indices=True,
        new_fingerprint=fp,
        load_from_cache_file=load_from_cache_file,
        desc=desc or f"mixwise: {scorer.name}",
    )


def add_columns(
    dataset: datasets.Dataset,
    columns: Mapping[str, Any],
    transform: str,
    config: Mapping[str, Any],
    what: str = "the columns",
) -> datasets.Dataset:
    """`dataset` with precomputed per-row `columns` (same row order; a column of that name is replaced), each with
    the explicit fingerprint `transform_fingerprint(f"{transform}:{name}", config, None, input fingerprint)`.

    `config` must determine the values (e.g. the method's configuration plus a digest of its scores)."""
    for values in columns.values():
        if len(values) != len(dataset):
            raise ValueError(f"dataset has {len(dataset)} rows but {what} cover {len(values)}")
    for name, values in columns.items():
        if name in dataset.column_names:
            dataset = dataset.remove_columns(name)
        fp = transform_fingerprint(f"{transform}:{name}", config, None, dataset._fingerprint)
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        dataset = dataset.add_column(name, values, new_fingerprint=fp)
    return dataset


__all__ = ["Scorer", "add_columns", "add_scores", "apply_plan", "select_mixture"]
