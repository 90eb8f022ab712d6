"""Plans: the selection made concrete, and its manifest (`selection.json`).

A **plan** says how many rows of which source a run trains on under a **budget**, and — for per-sample
methods — which rows. Three shapes share one class:

* a *weight plan*: per-source weights turned into exact integer counts by [`allocate`] (largest remainder);
  the rows inside each source are drawn by [`Plan.resolve`] — uniformly without replacement up to the
  source's size, then full passes plus a seeded random remainder (flagged `repeated` in the manifest);
* a *per-sample plan*: explicit row ids per source ([`Plan.from_rows`]);
* a *staged plan*: an ordered list of sub-plans ([`Plan.staged`]) delivered one after the other (curricula).

The manifest holds the plan plus the method, its configuration, fingerprints of model and data, the seed and
the library version, so that a run can be reproduced and audited. `Plan.from_json(plan.to_json()) == plan`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .files import atomic_write_text, json_default
from .fingerprint import stable_seed

MANIFEST_NAME = "selection.json"


def check_budget(budget: Any, name: str = "budget") -> int:
    """`budget` as an `int`: a positive whole number of rows. A float with a fractional part (`12.5`, e.g. from a
    YAML file) is refused rather than truncated; an integral float (`12.0`) is accepted."""
    if isinstance(budget, float) and budget.is_integer():
        budget = int(budget)
    if isinstance(budget, bool) or not isinstance(budget, int | np.integer):
        kind = type(budget).__name__
        raise ValueError(f"{name} must be a positive whole number of rows, got {budget!r} ({kind})")
    if budget <= 0:
        raise ValueError(f"{name} must be a positive whole number of rows, got {budget}")
    return int(budget)


def check_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Validate per-source weights: finite, non-negative, not all zero. Names the offending source. (Weights are
    only compared with each other: any finite scale works, 1e308 included.)"""
    if not weights:
        raise ValueError("no weights given")
    out = {}
    for name, w in weights.items():
        try:
            w = float(w)
        except (TypeError, ValueError):
            raise ValueError(f"weight of source '{name}' is not a number: {w!r}") from None
        if math.isnan(w) or math.isinf(w):
            raise ValueError(f"weight of source '{name}' is {w}; weights must be finite")
        if w < 0:
            raise ValueError(f"weight of source '{name}' is negative ({w}); weights must be >= 0")
        out[name] = w
    if sum(out.values()) <= 0:
        raise ValueError(f"all weights are zero ({sorted(out)}); at least one source needs a positive weight")
    return out


def allocate(weights: Mapping[str, float], budget: int) -> dict[str, int]:
    """Turn weights into integer counts that sum to `budget` exactly (largest-remainder / Hamilton method).

    `N_i = floor(N · w_i / Σw)`, then the `N − Σ N_i` leftover units go to the largest fractional parts; ties go
    to the source listed first. A zero weight gets zero rows.
    """
    budget = check_budget(budget)
    weights = check_weights(weights)
    names = list(weights)
    w = np.array([weights[n] for n in names], dtype=np.float64)
    w = w / w.max()  # the shares are scale-free; this keeps Σw finite for weights near the float maximum
    quotas = budget * w / w.sum()
    counts = np.floor(quotas).astype(np.int64)
    leftover = budget - int(counts.sum())
    if leftover > 0:
        frac = quotas - counts
        frac[w == 0] = -1.0  # a zero weight never receives a leftover unit
        order = sorted(range(len(names)), key=lambda i: (-frac[i], i))
        for i in order[:leftover]:
            counts[i] += 1
    return {n: int(c) for n, c in zip(names, counts)}


@dataclass
class SourcePlan:
    """The share of one source in a plan."""

    weight: float
    count: int
    size: int
    rows: list[int] | None = None  # explicit row ids (per-sample plans); None = drawn by `Plan.resolve`

    @property
    def repeated(self) -> bool:
        """True when the source must give more rows than it has (full passes + a random remainder)."""
        if self.rows is not None:
            return len(set(self.rows)) < len(self.rows)
        return self.count > self.size


@dataclass
class Plan:
    """How many rows of which source (and which rows), in what order. Serialized as `selection.json`.

    Build with [`Plan.from_weights`], [`Plan.from_rows`] or [`Plan.staged`] rather than directly.
    """

    budget: int
    sources: dict[str, SourcePlan]
    method: str = "uniform"
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, Any] = field(default_factory=dict)
    skipped: dict[str, Any] = field(default_factory=dict)
    stages: list[Plan] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific results (metric matrices, votes, ...)
    version: str = ""

    def __post_init__(self):
        if not self.version:
            from . import __version__

            self.version = __version__

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_weights(cls, weights: Mapping[str, float], sizes: Mapping[str, int], budget: int, **kwargs: Any) -> Plan:
        """Allocate `budget` rows across sources in proportion to `weights` (exact, largest remainder)."""
        budget = check_budget(budget)
        weights = check_weights(weights)
        _check_sizes(sizes, weights)
        counts = allocate(weights, budget)
        top = max(weights.values())
        total = sum(w / top for w in weights.values())
        sources = {
            n: SourcePlan(weight=(weights[n] / top) / total, count=counts[n], size=int(sizes[n])) for n in weights
        }
        return cls(budget=budget, sources=sources, **kwargs)

    @classmethod
    def uniform(cls, sizes: Mapping[str, int], budget: int, **kwargs: Any) -> Plan:
        """Equal weight for every source that has rows (an empty source gets weight 0)."""
        kwargs.setdefault("method", "uniform")
        if sizes and not any(sizes.values()):
            raise ValueError(f"every source is empty ({list(sizes)}); nothing to draw rows from")
        return cls.from_weights({n: 1.0 if size else 0.0 for n, size in sizes.items()}, sizes, budget, **kwargs)

    @classmethod
    def from_rows(cls, rows: Mapping[str, Sequence[int]], sizes: Mapping[str, int], **kwargs: Any) -> Plan:
        """A per-sample plan: exactly these row ids of each source (a source absent from `rows` gets none)."""
        _check_sizes(sizes, rows)
        sources = {}
        for name in sizes:
            ids = [int(i) for i in rows.get(name, [])]
            bad = [i for i in ids if i < 0 or i >= sizes[name]]
            if bad:
                raise ValueError(f"source '{name}': row ids out of range [0, {sizes[name]}): {bad[:5]}")
            sources[name] = SourcePlan(weight=0.0, count=len(ids), size=int(sizes[name]), rows=ids)
        budget = sum(s.count for s in sources.values())
        if budget == 0:
            raise ValueError("a per-sample plan must select at least one row")
        for s in sources.values():
            s.weight = s.count / budget
        return cls(budget=budget, sources=sources, **kwargs)

    @classmethod
    def staged(cls, stages: Sequence[Plan], **kwargs: Any) -> Plan:
        """An ordered list of sub-plans, delivered stage after stage (each shuffled inside itself)."""
        if not stages:
            raise ValueError("a staged plan needs at least one stage")
        names = list(stages[0].sources)
        for k, st in enumerate(stages):
            if st.stages:
                raise ValueError(f"stage {k} is itself staged; nest stages by flattening them")
            if list(st.sources) != names:
                raise ValueError(f"stage {k} covers sources {list(st.sources)}, stage 0 covers {names}")
        budget = sum(st.budget for st in stages)
        sources = {
            n: SourcePlan(
                weight=sum(st.sources[n].count for st in stages) / budget,
                count=sum(st.sources[n].count for st in stages),
                size=stages[0].sources[n].size,
            )
            for n in names
        }
        return cls(budget=budget, sources=sources, stages=list(stages), **kwargs)

    # -- views ----------------------------------------------------------------------------------------------------

    @property
    def weights(self) -> dict[str, float]:
        return {n: s.weight for n, s in self.sources.items()}

    @property
    def counts(self) -> dict[str, int]:
        return {n: s.count for n, s in self.sources.items()}

    @property
    def sizes(self) -> dict[str, int]:
        return {n: s.size for n, s in self.sources.items()}

    def resolve(self, seed: int | None = None) -> list[dict[str, np.ndarray]]:
        """The explicit row ids of every source, one dict per stage (a single stage when not staged).

        Rows of a weight plan are drawn with a generator seeded by `(seed, stage, source name)`: uniformly without
        replacement while `count <= size`; beyond, `count // size` full passes plus a random remainder.
        """
        seed = self.seed if seed is None else seed
        stages = self.stages or [self]
        out = []
        for k, st in enumerate(stages):
            resolved = {}
            for name, sp in st.sources.items():
                if sp.rows is not None:
                    resolved[name] = np.asarray(sp.rows, dtype=np.int64)
                    continue
                if sp.count == 0:
                    resolved[name] = np.empty(0, dtype=np.int64)
                    continue
                if sp.size <= 0:
                    raise ValueError(f"source '{name}' is empty but the plan asks for {sp.count} rows")
                rng = np.random.default_rng(stable_seed(seed, k, name))
                passes, rest = divmod(sp.count, sp.size)
                parts = [np.tile(np.arange(sp.size, dtype=np.int64), passes)] if passes else []
                parts.append(np.sort(rng.choice(sp.size, size=rest, replace=False)).astype(np.int64))
                resolved[name] = np.concatenate(parts)
            out.append(resolved)
        return out

    def to_trl_mixture(self, paths: Mapping[str, str] | None = None, split: str = "train") -> list[dict[str, Any]]:
        """The plan as TRL's `datasets:` mixture entries (`DatasetMixtureConfig`), one per source with rows — only
        when those entries train on exactly this plan.

        TRL normalizes the `fraction`s, caps the mixture so that no dataset is oversampled and keeps the *first*
        `round(fraction × total)` rows of each dataset. That reproduces a plan only when every source it draws
        from is taken whole (`count == size`): a plan that samples some rows of a source, repeats rows, picks rows
        (per-sample plans) or orders stages cannot be written as fractions, and this raises `ValueError` — write
        the plan's rows with `mixwise export` ([`mixwise.export.export_plan`]) instead.
        """
        hint = "write its rows with `mixwise export PLAN --sources ... --out DIR` (an exact DatasetDict + TRL YAML)"
        if self.stages:
            raise ValueError(f"a staged plan ({len(self.stages)} stages, in order) cannot be TRL fractions; {hint}")
        if any(s.rows is not None for s in self.sources.values()):
            raise ValueError(
                f"a per-sample plan (explicit rows, method {self.method!r}) cannot be TRL fractions; {hint}"
            )
        repeated = [n for n, s in self.sources.items() if s.repeated]
        if repeated:
            raise ValueError(
                f"the plan repeats rows of {repeated} (count > size), which TRL's mixture never does; {hint}"
            )
        partial = [f"{n} ({s.count} of {s.size})" for n, s in self.sources.items() if 0 < s.count < s.size]
        if partial:
            raise ValueError(
                f"the plan draws a random subset of {', '.join(partial)} rows, but TRL's mixture keeps the first rows "
                f"of each dataset and caps the total so that no dataset is oversampled (the fractions do not "
                f"reproduce the budget of {self.budget} rows); {hint}"
            )
        paths = paths or {}
        return [
            {"path": paths.get(n, n), "split": split, "fraction": round(s.weight, 8)}
            for n, s in self.sources.items()
            if s.count > 0
        ]

    # -- serialization --------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = {
            "method": self.method,
            "budget": self.budget,
            "seed": self.seed,
            "version": self.version,
            "sources": {
                n: {**asdict(s), "repeated": s.repeated} if s.rows is not None else _drop_rows(s)
                for n, s in self.sources.items()
            },
            "config": self.config,
            "fingerprints": self.fingerprints,
            "skipped": self.skipped,
            "extra": self.extra,
        }
        if self.stages is not None:
            d["stages"] = [st.to_dict() for st in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Plan:
        missing = [k for k in ("method", "budget", "sources") if k not in d]
        if missing:
            raise ValueError(f"not a mixwise selection manifest: missing keys {missing}")
        sources = {
            n: SourcePlan(weight=float(s["weight"]), count=int(s["count"]), size=int(s["size"]), rows=s.get("rows"))
            for n, s in d["sources"].items()
        }
        stages = [cls.from_dict(st) for st in d["stages"]] if d.get("stages") is not None else None
        return cls(
            budget=int(d["budget"]),
            sources=sources,
            method=d["method"],
            seed=int(d.get("seed", 0)),
            config=dict(d.get("config", {})),
            fingerprints=dict(d.get("fingerprints", {})),
            skipped=dict(d.get("skipped", {})),
            stages=stages,
            extra=dict(d.get("extra", {})),
            version=d.get("version", ""),
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False, default=json_default)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        return cls.from_dict(json.loads(text))

    def save(self, path: str | os.PathLike) -> str:
        """Write the manifest; a directory path gets `selection.json` inside it. Returns the file path."""
        path = os.fspath(path)
        if os.path.isdir(path) or not path.endswith(".json"):
            os.makedirs(path, exist_ok=True)
            path = os.path.join(path, MANIFEST_NAME)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        return atomic_write_text(path, self.to_json())  # a crash never leaves half a manifest

    @classmethod
    def load(cls, path: str | os.PathLike) -> Plan:
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, MANIFEST_NAME)
        with open(path) as f:
            return cls.from_json(f.read())


def _drop_rows(s: SourcePlan) -> dict[str, Any]:
    return {"weight": s.weight, "count": s.count, "size": s.size, "repeated": s.repeated}


def _check_sizes(sizes: Mapping[str, int], used: Mapping[str, Any]) -> None:
    unknown = [n for n in used if n not in sizes]
    if unknown:
        raise ValueError(f"plan names unknown sources {unknown}; known sources: {list(sizes)}")
    for n, size in sizes.items():
        if not isinstance(size, int | np.integer) or size < 0:
            raise ValueError(f"size of source '{n}' must be a non-negative integer, got {size!r}")
    empty = [n for n, size in sizes.items() if size == 0 and _wants_rows(used.get(n))]
    if empty:
        raise ValueError(
            f"sources {empty} are empty (0 rows) but have a positive weight or rows in the plan; give them weight 0 "
            "or leave them out"
        )


def _wants_rows(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, int | float):
        return value > 0
    return len(value) > 0
