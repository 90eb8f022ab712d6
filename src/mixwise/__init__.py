"""mixwise: decide what a model trains on.

A pool of named sources + a plan (per-source weights, per-sample rows, or stages) → the exact mixture a
transformers / TRL trainer trains on under a budget. See the README for the integrations.

Names are imported lazily, so `import mixwise.toy` or `mixwise.plan` does not pay for importing transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "SelectionCallback": "callback",
    "Mixture": "mixture",
    "Plan": "plan",
    "SourcePlan": "plan",
    "allocate": "plan",
    "MixtureBatchSampler": "sampler",
    "MixtureSampler": "sampler",
    "RepeatMixtureSampler": "sampler",
    "FixedWeights": "selectors",
    "RandomSubset": "selectors",
    "SelectionContext": "selectors",
    "Selector": "selectors",
    "Uniform": "selectors",
    "DataError": "sources",
    "Fields": "sources",
    "Source": "sources",
    "extract_fields": "sources",
    "load_source": "sources",
    "validate_source": "sources",
    "MixtureTrainerMixin": "trainer",
    "attach": "trainer",
    "mixture_trainer_class": "trainer",
    "add_columns": "transforms",
    "add_scores": "transforms",
    "apply_plan": "transforms",
    "select_mixture": "transforms",
    "export_plan": "export",
    "transform_fingerprint": "fingerprint",
    "SELECTORS": "registry",
    "make_selector": "registry",
    "DataProphet": "dataprophet",
    "DataProphetInstances": "dataprophet",
    "ICONS": "icons",
    "CADC": "cadc",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mixwise' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from .cadc import CADC
    from .callback import SelectionCallback
    from .dataprophet import DataProphet, DataProphetInstances
    from .export import export_plan
    from .fingerprint import transform_fingerprint
    from .icons import ICONS
    from .mixture import Mixture
    from .plan import Plan, SourcePlan, allocate
    from .registry import SELECTORS, make_selector
    from .sampler import MixtureBatchSampler, MixtureSampler, RepeatMixtureSampler
    from .selectors import FixedWeights, RandomSubset, SelectionContext, Selector, Uniform
    from .sources import DataError, Fields, Source, extract_fields, load_source, validate_source
    from .trainer import MixtureTrainerMixin, attach, mixture_trainer_class
    from .transforms import add_columns, add_scores, apply_plan, select_mixture
