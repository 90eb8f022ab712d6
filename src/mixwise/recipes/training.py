"""The trainer side of a recipe run: resuming full fine-tunes from their checkpoint's weights, the per-source
training loss, and the count of what was collated — carried across a resume.

* **Full-model checkpoints.** `save_pretrained` writes a vision-language model's weights under their original
  checkpoint names (`language_model.model.layers...`, transformers' `save_original_format`), but
  `Trainer._load_from_checkpoint` reads them back with a plain `load_state_dict`, which then matches no key:
  transformers warns "missing keys: [every parameter]" and training continues from the *base* weights
  (transformers #43701). [`FullCheckpointLoadingMixin`] loads such a checkpoint through `from_pretrained`, which
  applies the key conversion, and refuses a checkpoint that still does not match.
* **Per-source training loss.** The collator knows every row's source; [`ConsumptionLog`] puts the source of each
  row into the batch, [`ConsumptionCountingMixin`] takes it out before the forward pass, and [`SourceLossMixin`] turns the model's logits into each row's own mean answer-token loss,
  averaged per source between two logging steps: `train_loss_by_source/<source>`.
* **What was trained on.** [`ConsumptionLog`] counts the rows trained on per source (and, if asked, records each
  `(source, row id)`); [`ConsumptionCheckpointCallback`] writes the totals so far into every checkpoint, and a
  resumed run starts from the checkpoint's totals, so `consumed.json` covers the whole run.
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
    "FullCheckpointLoadingMixin",
    "SourceLossCallback",
    "SourceLossMixin",
    "gather_consumption",
    "load_full_checkpoint",
    "read_consumption",
    "recipe_trainer_class",
]

CONSUMED_NAME = "consumed.json"
ROW_COLUMN = "mixwise_row"  # the mixture index of each row, added to the training set when rows are recorded
SOURCE_KEY = "mixwise_source"  # the batch entry that carries each row's source (an index into the mixture's names)
ROW_KEY = "mixwise_row_index"  # the batch entry that carries each row's mixture index (with record_rows)


def load_full_checkpoint(model: Any, checkpoint: str | os.PathLike) -> None:
    """Load a full-model checkpoint written by `save_pretrained` into `model`, with the key conversion that
    `from_pretrained` applies. Raises `ValueError` when the checkpoint's parameters do not match the model's."""
    param = next(model.parameters())
    loaded = type(model).from_pretrained(os.fspath(checkpoint), dtype=param.dtype, device_map=None)
    result = model.load_state_dict(loaded.state_dict(), strict=False)
    del loaded
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint {os.fspath(checkpoint)!r} does not match the model: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


def _full_model_checkpoint(path: str) -> bool:
    return any(
        os.path.isfile(os.path.join(path, name))
        for name in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
    )


class FullCheckpointLoadingMixin:
    """`Trainer._load_from_checkpoint` for full fine-tunes that applies transformers' checkpoint key conversion
    (see the module docstring). PEFT adapters, FSDP and DeepSpeed checkpoints keep the Trainer's own loading."""

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        from peft import PeftModel
        from transformers import PreTrainedModel

        target = model if model is not None else self.model
        if (
            isinstance(target, PreTrainedModel)
            and not isinstance(target, PeftModel)
            and not getattr(self, "is_fsdp_enabled", False)
            and not getattr(self, "is_deepspeed_enabled", False)
            and _full_model_checkpoint(resume_from_checkpoint)
        ):
            load_full_checkpoint(target, resume_from_checkpoint)
            return None
        return super()._load_from_checkpoint(resume_from_checkpoint, model)


class SourceLossMixin:
    """Logs the training loss per source: each row's mean loss over its own label tokens (`labels != -100`),
    averaged over the rows of a source seen since the last logging step, summed over processes.

    Needs the batch's sources (kept by [`ConsumptionCountingMixin`]) and `labels` in the batch; without them it
    does nothing."""

    mixwise_source_names: list[str] = []
    mixwise_batch_sources: torch.Tensor | None = None
    mixwise_loss_sums: collections.Counter | None = None
    mixwise_loss_rows: collections.Counter | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sources, self.mixwise_batch_sources = getattr(self, "mixwise_batch_sources", None), None
        loss, outputs = super().compute_loss(model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch)
        labels = inputs.get("labels")
        logits = getattr(outputs, "logits", None) if not isinstance(outputs, dict) else outputs.get("logits")
        if sources is not None and labels is not None and logits is not None and model.training:
            with torch.no_grad():
                self.mixwise_add_row_losses(logits, labels, sources)
        return (loss, outputs) if return_outputs else loss

    def mixwise_add_row_losses(self, logits: torch.Tensor, labels: torch.Tensor, sources: torch.Tensor) -> None:
        if self.mixwise_loss_sums is None:
            self.mixwise_loss_sums, self.mixwise_loss_rows = collections.Counter(), collections.Counter()
        shifted = labels[:, 1:]
        mask = shifted != -100
        token_loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), shifted.clamp(min=0), reduction="none"
        )
        counts = mask.sum(dim=1)
        row_loss = (token_loss * mask).sum(dim=1) / counts.clamp(min=1)
        for s, value, n in zip(sources.tolist(), row_loss.tolist(), counts.tolist()):
            if n > 0:
                name = self.mixwise_source_names[s]
                self.mixwise_loss_sums[name] += value
                self.mixwise_loss_rows[name] += 1

    def mixwise_pop_source_losses(self) -> dict[str, float]:
        """`{train_loss_by_source/<name>: mean}` since the last call, over all processes (a collective: every
        process calls it at the same logging step)."""
        from accelerate.utils import gather_object

        local = (dict(self.mixwise_loss_sums or {}), dict(self.mixwise_loss_rows or {}))
        self.mixwise_loss_sums, self.mixwise_loss_rows = collections.Counter(), collections.Counter()
        sums: collections.Counter = collections.Counter()
        rows: collections.Counter = collections.Counter()
        for s, r in gather_object([local]):
            sums.update(s)
            rows.update(r)
        return {f"train_loss_by_source/{n}": sums[n] / rows[n] for n in sorted(rows) if rows[n]}


_CLASSES: dict[tuple[type, bool], type] = {}


def recipe_trainer_class(base: type, loss_by_source: bool = False) -> type:
    """`base` (SFTTrainer, GRPOTrainer, ...) with [`ConsumptionCountingMixin`], [`FullCheckpointLoadingMixin`] and,
    with `loss_by_source`, [`SourceLossMixin`]."""
    key = (base, loss_by_source)
    if key not in _CLASSES:
        mixins = (ConsumptionCountingMixin, FullCheckpointLoadingMixin)
        if loss_by_source:
            mixins = (SourceLossMixin, *mixins)
        _CLASSES[key] = type(f"Recipe{base.__name__}", (*mixins, base), {})
    return _CLASSES[key]


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
                from ..files import atomic_write_text

                atomic_write_text(os.path.join(ckpt, CONSUMED_NAME), json.dumps(totals, indent=2))
        return control


class SourceLossCallback(TrainerCallback):
    """Logs [`SourceLossMixin`]'s per-source training losses right after each training log of the trainer."""

    def __init__(self, trainer: Any):
        self.trainer = trainer

    def on_log(self, args, state, control, logs=None, **kwargs):
        from .probes import is_training_log

        if is_training_log(logs):
            from .probes import log_extra

            losses = self.trainer.mixwise_pop_source_losses()
            if losses:
                log_extra(self.trainer, losses)
        return control
