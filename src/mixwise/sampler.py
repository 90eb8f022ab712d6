"""Samplers that deliver a mixture's plan to a trainer.

Both samplers produce, on every rank, the *same* index stream — seeded from the run's seed and the epoch — so
that accelerate's batch sharding hands each rank a disjoint slice of one global stream (a private, unseeded RNG
per rank would silently give every rank a different stream). The stream is a pure function of
`(plan, seed, epoch)`, so resuming mid-epoch with accelerate's `skip_first_batches` continues it with no row
repeated or skipped.

The plan is read from the [`~mixwise.Mixture`] when iteration starts: installing a new plan with
`Mixture.set_plan` (or `sampler.set_plan`) before the epoch begins changes what is drawn, which is how the
selection callback works.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from .mixture import Mixture
from .plan import Plan


class MixtureSampler(Sampler[int]):
    """Draw one epoch of the mixture's plan: `budget` indices into `mixture.dataset`.

    Args:
        mixture: the pool and its current plan.
        seed: the run's seed (`TrainingArguments.data_seed` or `seed`).
    """

    def __init__(self, mixture: Mixture, seed: int | None = None):
        self.mixture = mixture
        self.seed = mixture.seed if seed is None else int(seed)
        self.epoch = 0
        self._epoch_was_set = False

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._epoch_was_set = True

    def set_plan(self, plan: Plan) -> None:
        self.mixture.set_plan(plan)

    def __len__(self) -> int:
        return self.mixture.budget

    def indices(self, epoch: int | None = None) -> np.ndarray:
        return self.mixture.indices(self.epoch if epoch is None else epoch, seed=self.seed)

    def _next_epoch(self) -> int:
        # An epoch the trainer did not announce through `set_epoch` follows the previous one, so that iterating
        # twice never replays the same order.
        epoch = self.epoch
        if not self._epoch_was_set:
            self.epoch += 1
        self._epoch_was_set = False
        return epoch

    def __iter__(self) -> Iterator[int]:
        yield from self.indices(self._next_epoch()).tolist()


class RepeatMixtureSampler(MixtureSampler):
    """The GRPO form of [`MixtureSampler`], with the structure of TRL's `RepeatSampler`.

    The plan's stream is cut into chunks of `batch_size` unique prompts (an incomplete last chunk is dropped, as
    TRL does); each chunk is emitted `repeat_count` times (`num_iterations × steps_per_generation`), and inside a
    chunk every index `mini_repeat_count` (`num_generations`) times in a row, so that a prompt's completions form
    one reward group.
    """

    def __init__(
        self,
        mixture: Mixture,
        mini_repeat_count: int,
        batch_size: int = 1,
        repeat_count: int = 1,
        seed: int | None = None,
    ):
        super().__init__(mixture, seed=seed)
        if mini_repeat_count < 1 or batch_size < 1 or repeat_count < 1:
            raise ValueError(
                f"mini_repeat_count, batch_size and repeat_count must be >= 1, got "
                f"{mini_repeat_count}, {batch_size}, {repeat_count}"
            )
        self.mini_repeat_count = int(mini_repeat_count)
        self.batch_size = int(batch_size)
        self.repeat_count = int(repeat_count)

    def __len__(self) -> int:
        return (self.mixture.budget // self.batch_size) * self.batch_size * self.mini_repeat_count * self.repeat_count

    def indices(self, epoch: int | None = None) -> np.ndarray:
        stream = super().indices(epoch)
        n_chunks = len(stream) // self.batch_size
        chunks = stream[: n_chunks * self.batch_size].reshape(n_chunks, 1, self.batch_size, 1)
        # (chunk, repeat, index, generation): each chunk repeated, each index repeated inside it.
        return np.broadcast_to(chunks, (n_chunks, self.repeat_count, self.batch_size, self.mini_repeat_count)).reshape(
            -1
        )
