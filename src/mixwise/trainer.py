"""Making a transformers / TRL trainer draw through the mixture sampler.

Two ways, for the same effect:

```python
# 1. one line on an existing trainer (Trainer, SFTTrainer, GRPOTrainer, ...)
trainer = SFTTrainer(model=..., args=..., train_dataset=mixture.dataset, ...)
mixwise.attach(trainer, mixture, selector=mixwise.Uniform())

# 2. a subclass
class MyTrainer(mixwise.MixtureTrainerMixin, SFTTrainer): ...
trainer = MyTrainer(..., train_dataset=mixture.dataset); trainer.mixture = mixture
```

transformers 5.x builds the sampler in `Trainer._get_train_sampler(self, train_dataset=None)` and hands it a
column-pruned dataset, so the per-source layout comes from the mixture, not from the dataset.

**Exactly the plan on N processes.** The trainer draws through a [`~mixwise.MixtureBatchSampler`]: each rank gets
its own batches, the last uneven global batch split across the ranks instead of padded with repeated rows, so that
the rows consumed over all ranks are exactly the plan's (see [`mixwise.sampler`] for the rule and the two cases
refused). It is handed to the `Trainer` as a rank-aware batch sampler (a subclass of transformers'
`BatchRebalanceSampler`, the class the `Trainer` passes through accelerate without sharding it again). GRPO keeps
TRL's `RepeatSampler` structure ([`~mixwise.RepeatMixtureSampler`]), whose generation batches always divide.
"""

from __future__ import annotations

import os
from typing import Any

from .callback import SelectionCallback
from .mixture import Mixture
from .sampler import MixtureBatchSampler, MixtureSampler, RepeatMixtureSampler
from .selectors import Selector


def _is_grpo(trainer: Any) -> bool:
    return hasattr(trainer, "num_generations") and hasattr(trainer.args, "steps_per_generation")


class MixtureTrainerMixin:
    """Overrides `_get_train_sampler` to draw the mixture's plan (GRPO: keeping `RepeatSampler`'s structure)."""

    mixture: Mixture | None = None
    mixwise_resume_from: str | None = None

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        # Remember which checkpoint is resumed, so that the selection callback reuses the plan saved there.
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            self.mixwise_resume_from = get_last_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, str | os.PathLike):
            self.mixwise_resume_from = os.fspath(resume_from_checkpoint)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    def _get_train_sampler(self, train_dataset=None):
        mixture = getattr(self, "mixture", None)
        if mixture is None:
            return super()._get_train_sampler(train_dataset)
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if dataset is not None and len(dataset) != mixture.total_size:
            raise ValueError(
                f"the trainer's train_dataset has {len(dataset)} rows but the mixture has {mixture.total_size}: "
                "pass `mixture.dataset` as train_dataset (and do not use packing, which changes the rows)"
            )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        if _is_grpo(self):
            return RepeatMixtureSampler(
                mixture,
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                seed=seed,
            )
        batch_sampler = trainer_batch_sampler_class()
        if batch_sampler is None:  # a transformers without rank-aware batch samplers: accelerate shards (and pads)
            return MixtureSampler(mixture, seed=seed)
        return batch_sampler(
            mixture,
            batch_size=self._train_batch_size,
            num_processes=self.args.world_size,
            process_index=self.args.process_index,
            seed=seed,
            drop_last=self.args.dataloader_drop_last,
        )


_CLASSES: dict[type, type] = {}
_BATCH_SAMPLER: list[type | None] = []


def trainer_batch_sampler_class() -> type | None:
    """[`MixtureBatchSampler`] as a batch sampler the `Trainer` passes to accelerate unsharded (it subclasses
    transformers' `BatchRebalanceSampler`, the marker of rank-aware batch samplers; none of its code is used), or
    `None` when this transformers has no such class."""
    if not _BATCH_SAMPLER:
        try:
            from transformers.trainer_pt_utils import BatchRebalanceSampler
        except ImportError:
            _BATCH_SAMPLER.append(None)
        else:
            _BATCH_SAMPLER.append(type("TrainerMixtureBatchSampler", (MixtureBatchSampler, BatchRebalanceSampler), {}))
    return _BATCH_SAMPLER[0]


def mixture_trainer_class(trainer_cls: type) -> type:
    """`trainer_cls` with [`MixtureTrainerMixin`] mixed in (cached, so the same class is returned every time)."""
    if issubclass(trainer_cls, MixtureTrainerMixin):
        return trainer_cls
    if trainer_cls not in _CLASSES:
        _CLASSES[trainer_cls] = type(f"Mixture{trainer_cls.__name__}", (MixtureTrainerMixin, trainer_cls), {})
    return _CLASSES[trainer_cls]


def attach(
    trainer: Any,
    mixture: Mixture,
    selector: Selector | None = None,
    targets: dict[str, Any] | None = None,
    model_id: str | None = None,
) -> Any:
    """Make `trainer` train on `mixture`'s plan and, with a `selector`, compute that plan at train begin.

    The trainer's `train_dataset` must be `mixture.dataset` (or a row-for-row transform of it, such as
    SFTTrainer's tokenized copy). Returns the trainer, whose class gains [`MixtureTrainerMixin`].
    """
    if trainer.train_dataset is not None and len(trainer.train_dataset) != mixture.total_size:
        raise ValueError(
            f"the trainer's train_dataset has {len(trainer.train_dataset)} rows but the mixture has "
            f"{mixture.total_size}: pass `mixture.dataset` as train_dataset"
        )
    trainer.__class__ = mixture_trainer_class(type(trainer))
    trainer.mixture = mixture
    if selector is not None:
        callback = SelectionCallback(mixture, selector, targets=targets, model_id=model_id)
        callback.trainer = trainer
        trainer.add_callback(callback)
    return trainer


__all__ = [
    "MixtureTrainerMixin",
    "attach",
    "mixture_trainer_class",
    "trainer_batch_sampler_class",
]
