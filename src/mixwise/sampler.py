"""Samplers that deliver a mixture's plan to a trainer.

Both samplers produce, on every rank, the *same* index stream — seeded from the run's seed and the epoch — so
that accelerate's batch sharding hands each rank a disjoint slice of one global stream (a private, unseeded RNG
per rank would silently give every rank a different stream). The stream is a pure function of
`(plan, seed, epoch)`, so resuming mid-epoch with accelerate's `skip_first_batches` continues it with no row
repeated or skipped.

The plan is read from the [`~mixwise.Mixture`] when iteration starts: installing a new plan with
`Mixture.set_plan` (or `sampler.set_plan`) before the epoch begins changes what is drawn, which is how the
selection callback works.

**Exactly the plan, on any number of processes.** accelerate shards a plain sampler's stream by handing global
batch `k` to rank `k mod N` and, when the last global batch is incomplete, pads it with rows from the start of the
stream (so that every rank makes the same number of steps): a 90-row plan on 2 processes with batch 8 trains on
96 rows. [`MixtureBatchSampler`] — what the trainer integration uses ([`mixwise.MixtureTrainerMixin`]) — hands
each rank its own batches instead ([`rank_batches`]): the same full batches as accelerate, then the rows left
over are split across the ranks (batches of at most `batch_size` rows, sizes differing by at most one), so every
rank makes the same number of steps and the epoch consumes exactly the plan's rows, none repeated. When fewer rows
are left than there are processes, the last full global batch and the rest are split together into two smaller
batches per rank. Only what cannot be split so is refused, with a clear error: fewer rows in the plan than
processes, or a per-device batch of one row with a budget that is not a multiple of the number of processes.
`dataloader_drop_last=True` drops the incomplete last global batch instead (fewer rows than the plan, as asked).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from .distributed import share
from .mixture import Mixture
from .plan import Plan

__all__ = ["MixtureBatchSampler", "MixtureSampler", "RepeatMixtureSampler", "rank_batches"]


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


def rank_batches(n_rows: int, batch_size: int, world: int = 1, drop_last: bool = False) -> list[list[tuple[int, int]]]:
    """How an epoch stream of `n_rows` rows is cut into batches: `out[r]` lists rank `r`'s batches as `[start,
    stop)` ranges of the stream, every rank the same number of batches of at most `batch_size` rows, covering
    every row once (see the module docstring).

    With `G = batch_size × world`: global step `t < n_rows // G` gives rank `r` the rows `[tG + r·batch_size,
    tG + (r+1)·batch_size)` (accelerate's layout); the `R = n_rows mod G` rows left over are split across the ranks
    in contiguous parts whose sizes differ by at most one; if `0 < R < world`, the last full step and the leftover
    rows (`G + R`) are split that way instead, into two batches per rank. `drop_last` drops the leftover rows.
    """
    if batch_size < 1 or world < 1:
        raise ValueError(f"batch_size and world must be >= 1, got {batch_size} and {world}")
    step = batch_size * world
    full, left = divmod(n_rows, step)
    if drop_last or left == 0:
        body, tail_steps = full, 0
    elif left >= world:
        body, tail_steps = full, 1
    elif full >= 1 and batch_size >= 2:
        body, tail_steps = full - 1, 2
    elif n_rows < world:
        raise ValueError(
            f"the plan has {n_rows} rows but training runs on {world} processes: every process needs at least one "
            "row per step; raise the budget to at least the number of processes"
        )
    else:
        raise ValueError(
            f"a plan of {n_rows} rows cannot be split into the same number of batches of at most {batch_size} row "
            f"on each of {world} processes without repeating rows: choose a budget that is a multiple of {world}, "
            "or a per-device batch of at least 2 rows"
        )
    out: list[list[tuple[int, int]]] = [[] for _ in range(world)]
    for t in range(body):
        for r in range(world):
            start = t * step + r * batch_size
            out[r].append((start, start + batch_size))
    if tail_steps:
        base = body * step
        total = n_rows - base
        for r in range(world):
            lo, hi = share(total, r, world)
            for j in range(tail_steps):
                a, b = share(hi - lo, j, tail_steps)
                out[r].append((base + lo + a, base + lo + b))
    return out


class MixtureBatchSampler(Sampler[list[int]]):
    """One rank's batches of each epoch of the mixture's plan ([`rank_batches`]): exactly the plan's rows over all
    ranks, the same number of batches on every rank.

    Args:
        mixture: the pool and its current plan.
        batch_size: rows per batch and process (the per-device batch).
        num_processes, process_index: the data-parallel world and this rank.
        seed: the run's seed (`TrainingArguments.data_seed` or `seed`).
        drop_last: drop the incomplete last global batch instead of splitting it.
    """

    def __init__(
        self,
        mixture: Mixture,
        batch_size: int,
        num_processes: int = 1,
        process_index: int = 0,
        seed: int | None = None,
        drop_last: bool = False,
    ):
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} is not in a world of {num_processes}")
        self.sampler = MixtureSampler(mixture, seed=seed)
        self.mixture = mixture
        self.per_device_batch_size = int(batch_size)
        self.num_processes = int(num_processes)
        self.process_index = int(process_index)
        self.drop_last = bool(drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_plan(self, plan: Plan) -> None:
        self.mixture.set_plan(plan)

    def batches(self) -> list[tuple[int, int]]:
        """This rank's `[start, stop)` ranges of the epoch stream."""
        layout = rank_batches(self.mixture.budget, self.per_device_batch_size, self.num_processes, self.drop_last)
        return layout[self.process_index]

    def __len__(self) -> int:
        return len(self.batches())

    def __iter__(self) -> Iterator[list[int]]:
        stream = self.sampler.indices(self.sampler._next_epoch())
        for start, stop in self.batches():
            yield stream[start:stop].tolist()
