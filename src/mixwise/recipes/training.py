"""The trainer side of a recipe run: resuming full fine-tunes from their checkpoint's weights and the per-source
training loss (what was trained on is counted by [`mixwise.consumption`], carried across a resume).

* **Full-model checkpoints.** `save_pretrained` writes a vision-language model's weights under their original
  checkpoint names (`language_model.model.layers...`, transformers' `save_original_format`), but
  `Trainer._load_from_checkpoint` reads them back with a plain `load_state_dict`, which then matches no key:
  transformers warns "missing keys: [every parameter]" and training continues from the *base* weights
  (transformers #43701). [`FullCheckpointLoadingMixin`] loads such a checkpoint through `from_pretrained`, which
  applies the key conversion, and refuses a checkpoint that still does not match.
* **Per-source training loss.** The collator knows every row's source; [`mixwise.consumption.ConsumptionLog`] puts
  the source of each row into the batch, [`mixwise.consumption.ConsumptionCountingMixin`] takes it out before the
  forward pass, and [`SourceLossMixin`] turns the model's logits into each row's own mean answer-token loss,
  averaged per source between two logging steps: `train_loss_by_source/<source>`.
"""

from __future__ import annotations

import collections
import os
from typing import Any

import torch
from transformers import TrainerCallback

from ..consumption import ConsumptionCountingMixin

__all__ = [
    "FullCheckpointLoadingMixin",
    "SourceLossCallback",
    "SourceLossMixin",
    "load_full_checkpoint",
    "recipe_trainer_class",
]


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
