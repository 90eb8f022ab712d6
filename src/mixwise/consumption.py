"""What a trainer actually trained on: the rows it consumed, per source, counted at the training step.

The plan says what a run should train on; [`ConsumptionLog`] counts what it did. It wraps the trainer's collator,
which tags each collated batch with its rows' sources (and, with `record_rows`, their mixture indices);
[`ConsumptionCountingMixin`]'s `training_step` takes the tags out of the batch before the forward pass and counts
them. Counting at the step rather than at the collator matters: accelerate's data loader collates one batch ahead,
and a checkpoint must not count a batch the run has not trained on yet (a resumed run collates it again).
[`ConsumptionCheckpointCallback`] writes the totals so far into every checkpoint (`consumed.json`), and a resumed
run starts from them ([`read_consumption`]), so the file covers the whole run.

```python
trainer = mixwise.attach(SFTTrainer(..., train_dataset=mixture.dataset), mixture)
log = mixwise.consumption.record_consumption(trainer)  # needs remove_unused_columns=False (the source column)
trainer.train()
assert dict(log.counts) == mixture.plan.counts  # on one process; gather_consumption(log) over N
```
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from transformers import TrainerCallback

__all__ = [
    "CONSUMED_NAME",
    "ROW_COLUMN",
    "ROW_KEY",
    "SOURCE_KEY",
    "ConsumptionCheckpointCallback",
    "ConsumptionCountingMixin",
    "ConsumptionLog",
    "gather_consumption",
    "read_consumption",
    "record_consumption",
]

CONSUMED_NAME = "consumed.json"
ROW_COLUMN = "mixwise_row"  # the mixture index of each row, added to the training set when rows are recorded
SOURCE_KEY = "mixwise_source"  # the batch entry that carries each row's source (an index into the mixture's names)
ROW_KEY = "mixwise_row_index"  # the batch entry that carries each row's mixture index (with record_rows)


class ConsumptionLog:
    """Counts the rows the trainer trains on, per source (on top of `base`, the totals of the run resumed), and,
    with `record_rows`, records each row as `[source, row id]` (from the [`ROW_COLUMN`] index).

    It wraps the trainer's collator, which tags each collated batch with its rows' sources ([`SOURCE_KEY`]) and
    row ids; the rows are counted when a training step receives the batch ([`ConsumptionCountingMixin`]), not when
    it is collated: accelerate's data loader collates one batch ahead, and a checkpoint must not count a batch the
    run has not trained on yet (the resumed run collates it again). GRPO's batches are lists of rows, counted as
    they are."""

    def __init__(self, collator: Any, mixture: Any, record_rows: bool = False, base: dict[str, Any] | None = None):
        self.collator = collator
        self.mixture = mixture
        self.record_rows = record_rows
        self.names = list(mixture.names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.counts: collections.Counter = collections.Counter()
        self.rows: list[list[Any]] = []
        base = base or {}
        self.base_counts = collections.Counter(base.get("consumed", {}))
        self.base_rows = list(base.get("rows", []))

    def __call__(self, examples):
        if examples and isinstance(examples[0], Mapping) and "source" not in examples[0]:
            raise ValueError(
                "the rows reaching the collator have no 'source' column, so consumption cannot be counted: train "
                "with remove_unused_columns=False"
            )
        batch = self.collator(examples)
        if isinstance(batch, Mapping):
            batch[SOURCE_KEY] = torch.tensor([self.index[ex["source"]] for ex in examples])
            if self.record_rows:
                batch[ROW_KEY] = torch.tensor([int(ex[ROW_COLUMN]) for ex in examples])
        return batch

    def commit(self, inputs: Any) -> torch.Tensor | None:
        """Count the rows of a batch a training step received; returns the batch's source indices (tagged
        batches: removed from `inputs`, so that the model never sees them)."""
        if isinstance(inputs, Mapping):
            sources = inputs.pop(SOURCE_KEY, None)
            rows = inputs.pop(ROW_KEY, None)
            if sources is None:
                return None
            self.counts.update(self.names[i] for i in sources.tolist())
            if rows is not None:
                self.rows.extend(list(self.mixture.locate(i)) for i in rows.tolist())
            return sources
        if isinstance(inputs, list) and inputs and isinstance(inputs[0], Mapping) and "source" in inputs[0]:
            self.counts.update(ex["source"] for ex in inputs)
            if self.record_rows:
                self.rows.extend(list(self.mixture.locate(int(ex[ROW_COLUMN]))) for ex in inputs)
        return None


class ConsumptionCountingMixin:
    """`training_step` that counts the rows of each batch it trains on in `self.mixwise_consumption` (a
    [`ConsumptionLog`]) and keeps their sources for [`SourceLossMixin`]."""

    mixwise_consumption: ConsumptionLog | None = None
    mixwise_batch_sources: torch.Tensor | None = None

    def training_step(self, model, inputs, *args, **kwargs):
        if self.mixwise_consumption is not None:
            self.mixwise_batch_sources = self.mixwise_consumption.commit(inputs)
        return super().training_step(model, inputs, *args, **kwargs)


def gather_consumption(log: ConsumptionLog) -> dict[str, Any]:
    """The run's totals so far over all processes, plus what the resumed run had consumed (a collective)."""
    from accelerate.utils import gather_object

    total = collections.Counter(log.base_counts)
    rows = list(log.base_rows)
    for counts, rank_rows in gather_object([(dict(log.counts), log.rows)]):
        total.update(counts)
        rows.extend(rank_rows)
    out: dict[str, Any] = {"consumed": dict(total)}
    if log.record_rows:
        out["rows"] = rows
    return out


def read_consumption(checkpoint: str | os.PathLike | None) -> dict[str, Any]:
    """The `consumed.json` a checkpoint holds (empty when there is none)."""
    if checkpoint is None:
        return {}
    path = os.path.join(os.fspath(checkpoint), CONSUMED_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


class ConsumptionCheckpointCallback(TrainerCallback):
    """Writes the rows consumed so far (over all processes) into every checkpoint as `consumed.json`."""

    def __init__(self, log: ConsumptionLog):
        self.log = log

    def on_save(self, args, state, control, **kwargs):
        totals = gather_consumption(self.log)  # every process saves at the same step
        if state.is_world_process_zero:
            ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(ckpt):
                from .files import atomic_write_text

                atomic_write_text(os.path.join(ckpt, CONSUMED_NAME), json.dumps(totals, indent=2))
        return control


def record_consumption(trainer: Any, record_rows: bool = False, base: dict[str, Any] | None = None) -> ConsumptionLog:
    """Count what `trainer` (attached to a mixture: [`mixwise.attach`]) trains on: wraps its collator in a
    [`ConsumptionLog`] and gives it the [`ConsumptionCountingMixin`] step. Returns the log (`log.counts`)."""
    mixture = getattr(trainer, "mixture", None)
    if mixture is None:
        raise ValueError(
            "record_consumption needs a trainer attached to a mixture: call mixwise.attach(trainer, mixture) first"
        )
    log = ConsumptionLog(trainer.data_collator, mixture, record_rows=record_rows, base=base)
    if not isinstance(trainer, ConsumptionCountingMixin):
        cls = type(trainer)
        trainer.__class__ = type(f"Counting{cls.__name__}", (ConsumptionCountingMixin, cls), {})
    trainer.data_collator = log
    trainer.mixwise_consumption = log
    return log
