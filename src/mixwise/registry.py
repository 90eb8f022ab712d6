"""Selectors by name: what `method:` in a recipe, `--method` on the command line and `mixwise.make_selector` accept.

The baselines are registered directly; the methods are registered by import path and imported on first use (they
need torch, transformers and peft, which `import mixwise` does not pay for). Adding a selector is one line here:
`SELECTORS["mine"] = LazySelector("mixwise.mine", "Mine")` (or the class itself).
"""

from __future__ import annotations

import importlib
from typing import Any

from .selectors import FixedWeights, RandomSubset, Uniform

__all__ = ["SELECTORS", "LazySelector", "make_selector"]


class LazySelector:
    """A registry entry for a selector class imported on first use: calling it constructs the selector."""

    def __init__(self, name: str, module: str, attribute: str):
        self.name, self.module, self.attribute = name, module, attribute

    def load(self) -> type:
        return getattr(importlib.import_module(self.module), self.attribute)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"LazySelector({self.module}.{self.attribute})"


SELECTORS: dict[str, Any] = {
    "uniform": Uniform,
    "fixed_weights": FixedWeights,
    "random": RandomSubset,
    "dataprophet": LazySelector("dataprophet", "mixwise.dataprophet", "DataProphet"),
    "dataprophet_instances": LazySelector("dataprophet_instances", "mixwise.dataprophet", "DataProphetInstances"),
    "icons": LazySelector("icons", "mixwise.icons", "ICONS"),
    "cadc": LazySelector("cadc", "mixwise.cadc", "CADC"),
}


def make_selector(name: str, **kwargs: Any) -> Any:
    """The selector registered as `name`, constructed with `kwargs` (its configuration fields)."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selection method {name!r}; available: {sorted(SELECTORS)}")
    return SELECTORS[name](**kwargs)
