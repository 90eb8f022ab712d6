"""The mixture: a pool of sources laid end to end, and the plan that says what to draw from it.

`Mixture.dataset` is the concatenation of all sources (with a `source` column): that is what the trainer gets
as `train_dataset`. It is built without copying rows or building Python lists: each source's Arrow table gets a
constant `source` column, the tables are laid end to end, and rows dropped by validation are left out by one
indices mapping (5M text rows: about a second). Which rows are actually trained on, and in what order, is decided by the current plan and
delivered by the [`~mixwise.sampler.MixtureSampler`]. Because the sampler reads the plan from the mixture when
an epoch starts, a callback can install a new plan in place after the dataloader exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import numpy as np

from .fingerprint import short_hash, stable_seed
from .plan import Plan, check_budget
from .sources import Source, as_sources
from .validation import CheckedSource, SkipReport, check_source, decompose


class Mixture:
    """A pool of named sources, a budget and the current plan.

    Args:
        sources: `{name: Dataset}` or a list of [`~mixwise.Source`]. A source may be empty (it gets no rows).
        budget: number of rows one epoch trains on (a positive whole number). A new plan must keep this budget
            (the trainer has already computed its number of steps from it).
        plan: the initial plan; uniform over the non-empty sources by default.
        seed: default seed for drawing rows and shuffling (the trainer's `data_seed`/`seed` overrides it).
        source_column: name of the column that records each row's source in `dataset`.
        validate: check every row before use ([`mixwise.validation`]); `"raise"` (default), `"skip"` (drop and
            count bad rows, reported in the manifest) or `False`.
        check_images: decode every image while validating.
        processing_class: the processor (or tokenizer) the trainer will use: validation then also checks the chat
            template, image tokens and token lengths against `max_length`. Pass it whenever it is known.
        max_length: the trainer's `max_length` (TRL's `SFTConfig.max_length`; `None`: no truncation).
        num_proc: processes validating rows (default: the cores available); results are cached per dataset
            fingerprint, and one rank validates for all under `torchrun` / `accelerate launch`.
        cache: reuse cached validation results.
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
        *,
        processing_class: Any = None,
        max_length: int | None = None,
        num_proc: int | None = None,
        cache: bool = True,
    ):
        self.budget = check_budget(budget)
        self.sources = as_sources(sources)
        self.skipped: dict[str, Any] = {}
        if validate not in (False, None, "raise", "skip"):
            raise ValueError(f"validate must be 'raise', 'skip' or False, got {validate!r}")
        checked = []
        for s in self.sources:
            if validate:
                c = check_source(
                    s,
                    on_error=validate,
                    check_images=check_images,
                    processing_class=processing_class,
                    max_length=max_length,
                    num_proc=num_proc,
                    cache=cache,
                )
                if c.report.skipped or c.report.converted:
                    self.skipped[s.name] = c.report.to_dict()
            else:
                c = CheckedSource(s, SkipReport(source=s.name, total=len(s), kept=len(s)), [s.dataset], None)
            checked.append(c)
        self._checked = checked
        self.sources = [c.source for c in checked]
        self.seed = seed
        self.source_column = source_column
        self.names = [s.name for s in self.sources]
        self.sizes = {s.name: len(s) for s in self.sources}
        if not any(self.sizes.values()):
            raise ValueError(f"every source of the mixture is empty: {self.sizes}")
        offsets = np.cumsum([0] + [len(s) for s in self.sources])
        self.offsets = {n: int(o) for n, o in zip(self.names, offsets[:-1])}
        self.total_size = int(offsets[-1])
        self._dataset: datasets.Dataset | None = None
        self._plan: Plan | None = None
        self._resolved: dict[int, list[dict[str, np.ndarray]]] = {}
        self.set_plan(plan if plan is not None else Plan.uniform(self.sizes, self.budget, seed=seed))

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
            if sp.count > 0 and self.sizes[n] == 0:
                raise ValueError(f"plan draws {sp.count} rows from source '{n}', which has no rows")
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
        """All sources concatenated (no copy), with a `source` column: pass this as the trainer's `train_dataset`.

        Each source's rows come from unindexed Arrow tables (a constant column is appended to a table without
        copying it); rows dropped by validation, or a source's own indices mapping, become one indices mapping over
        the concatenation. The fingerprint is the one earlier versions gave (`remove_columns`, `add_column` with a
        list, `concatenate_datasets` over the validated sources), so stores keyed on it are reused.
        """
        if self._dataset is None:
            self._dataset = self._build_dataset()
        return self._dataset

    def _build_dataset(self) -> datasets.Dataset:
        col = self.source_column
        parts, orders, legacy = [], [], []
        offset, reordered = 0, False
        for c in self._checked:
            pieces, order = c.pieces, c.order
            simple = len(pieces) == 1 and order is None
            if simple:
                base, order = decompose(pieces[0])
                pieces = [base]
            # What earlier versions built for this source: the validated dataset, its own column removed, a
            # `source` column added from a list. Its fingerprint is reproduced without building the list.
            shown = c.source.dataset.remove_columns(col) if col in c.source.dataset.column_names else c.source.dataset
            legacy_fp = source_column_fingerprint(shown._fingerprint, col, c.source.name, len(shown))
            legacy.append((shown, legacy_fp))
            same = simple and order is None
            for piece in pieces:
                if col in piece.column_names:
                    piece = piece.remove_columns(col)
                fp = legacy_fp if same else short_hash([piece._fingerprint, col, c.source.name], 16)
                parts.append(piece.add_column(col, _constant(c.source.name, len(piece)), new_fingerprint=fp))
            size = sum(len(p) for p in pieces)
            if order is not None:
                reordered = True
                orders.append(np.asarray(order, dtype=np.int64) + offset)
            else:
                orders.append(np.arange(offset, offset + size, dtype=np.int64))
            offset += size
        whole = datasets.concatenate_datasets(parts)
        if not reordered:
            return whole
        stand_ins = [_stand_in(shown, col, fp) for shown, fp in legacy]
        fingerprint = datasets.concatenate_datasets(stand_ins)._fingerprint
        return whole.select(np.concatenate(orders), new_fingerprint=fingerprint)

    def fingerprints(self) -> dict[str, str]:
        return {s.name: s.fingerprint for s in self.sources}

    def __repr__(self) -> str:
        return f"Mixture(sources={self.sizes}, budget={self.budget}, method={self._plan.method!r})"


def _stand_in(shown: datasets.Dataset, column: str, fingerprint: str) -> datasets.Dataset:
    """A dataset with the fingerprint, info and split of `shown.add_column(column, <strings>)` (which is all
    `concatenate_datasets` derives its fingerprint from) and one row of nulls (none when `shown` is empty, since
    `concatenate_datasets` leaves empty datasets out)."""
    import pyarrow as pa
    from datasets.table import InMemoryTable

    info = shown.info.copy()
    info.features.update(datasets.Features.from_arrow_schema(pa.schema([pa.field(column, pa.string())])))
    schema = info.features.arrow_schema
    rows = 1 if len(shown) else 0
    table = pa.table({f.name: pa.nulls(rows, f.type) for f in schema}, schema=schema)
    return datasets.Dataset(InMemoryTable(table), info=info, split=shown.split, fingerprint=fingerprint)


def _constant(value: str, n: int) -> Any:
    import pyarrow as pa

    return pa.repeat(pa.scalar(value, pa.string()), n)


_FAST_OK: bool | None = None  # whether the fast fingerprint equals datasets' own here (checked once per process)


def _list_pickle(value: str, n: int) -> bytes | None:
    """The bytes `datasets.utils._dill.dumps([value] * n)` produces (pickle protocol 4, framed; strings are not
    memoized), built without pickling `n` objects; `None` for strings of 256 bytes or more."""
    import struct

    item_bytes = value.encode("utf-8", "surrogatepass")
    if len(item_bytes) > 255:
        return None
    item = b"\x8c" + bytes([len(item_bytes)]) + item_bytes  # SHORT_BINUNICODE
    size, batch = len(item), 1000  # pickle's _BATCHSIZE
    full, rest = divmod(n, batch)
    parts = [b"]\x94"] + [b"(" + item * batch + b"e"] * full  # EMPTY_LIST MEMOIZE, then MARK items APPENDS
    if rest > 1:
        parts.append(b"(" + item * rest + b"e")
    elif rest == 1:
        parts.append(item + b"a")  # a batch of one: APPEND
    parts.append(b".")
    stream = b"".join(parts)

    def start(i: int) -> int:  # where element i begins: pickle commits a frame only there
        b, j = divmod(i, batch)
        mark = 0 if (b == full and rest == 1) else 1
        return 2 + b * (2 + batch * size) + mark + j * size

    out = [b"\x80\x04"]
    begin = 0
    while True:
        lo, hi = 0, n  # the first element that starts at least one frame target (64 KiB) past `begin`
        while lo < hi:
            mid = (lo + hi) // 2
            if start(mid) - begin >= 65536:
                hi = mid
            else:
                lo = mid + 1
        end = start(lo) if lo < n else len(stream)
        frame = stream[begin:end]
        out.append(b"\x95" + struct.pack("<Q", len(frame)) + frame if len(frame) >= 4 else frame)
        if lo >= n:
            return b"".join(out)
        begin = end


def _fast_fingerprint(fingerprint: str, column: str, name: str, n: int) -> str | None:
    import xxhash
    from datasets.fingerprint import Hasher, format_kwargs_for_fingerprint, format_transform_for_fingerprint

    data = _list_pickle(name, n)
    if data is None:
        return None
    func = inspect.unwrap(datasets.Dataset.add_column)
    kwargs = format_kwargs_for_fingerprint(func, (None, column, [name]), {})
    kwargs["fingerprint_name"] = "new_fingerprint"
    hasher = Hasher()
    hasher.update(fingerprint)
    hasher.update(format_transform_for_fingerprint(func))
    for key in sorted(kwargs):
        hasher.update(key)
        if key == "column":  # Hasher.update(list): its type, then the xxh64 of its pickle
            hasher.m.update(f"=={list}==".encode())
            hasher.m.update(xxhash.xxh64(data).hexdigest().encode("utf-8"))
        else:
            hasher.update(kwargs[key])
    return hasher.hexdigest()


def _datasets_fingerprint(fingerprint: str, column: str, name: str, n: int) -> str:
    """What `add_column(column, [name] * n)` computes, by datasets' own functions (hashing the list: slow)."""
    from datasets.fingerprint import (
        format_kwargs_for_fingerprint,
        format_transform_for_fingerprint,
        update_fingerprint,
    )

    func = inspect.unwrap(datasets.Dataset.add_column)
    kwargs = format_kwargs_for_fingerprint(func, (None, column, [name] * n), {})
    kwargs["fingerprint_name"] = "new_fingerprint"
    return update_fingerprint(fingerprint, format_transform_for_fingerprint(func), kwargs)


def source_column_fingerprint(fingerprint: str, column: str, name: str, n: int) -> str:
    """The fingerprint `ds.add_column(column, [name] * n)` gives a dataset `ds` of `n` rows and fingerprint
    `fingerprint` — what earlier versions of `Mixture.dataset` computed by building and hashing that list (about
    3 s per million rows) — from the list's pickle bytes, which are regular. Checked once per process against
    datasets' own `add_column` (for lists that cross pickle's batches and frames); where they differ (another
    datasets or dill version), datasets' own functions are used."""
    global _FAST_OK
    if _FAST_OK is None:
        cases = (("count", 31_001), ("a", 1), ("two", 2), ("x" * 200, 1_000), ("b", 0), ("c", 2_001))
        probes = [(value, datasets.Dataset.from_dict({"x": list(range(k))})) for value, k in cases]
        _FAST_OK = all(
            _fast_fingerprint(probe._fingerprint, "source", value, len(probe))
            == probe.add_column("source", [value] * len(probe))._fingerprint
            for value, probe in probes
        )
    if _FAST_OK:
        fast = _fast_fingerprint(fingerprint, column, name, n)
        if fast is not None:
            return fast
    return _datasets_fingerprint(fingerprint, column, name, n)


__all__ = ["Mixture", "SkipReport", "source_column_fingerprint"]
