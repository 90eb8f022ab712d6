"""Splitting scoring work across processes, and agreeing on one plan.

All helpers work unchanged in a single process (they become no-ops) and under `accelerate launch` or
`torchrun` (they use accelerate's `PartialState`, which reads the launcher's environment).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def state():
    from accelerate import PartialState

    return PartialState()


def init_state() -> None:
    """Start accelerate's state for the launcher's processes (`torchrun` / `accelerate launch`).

    On a CPU-only machine under `torchrun`, accelerate only sets up the (gloo) process group when asked with
    `cpu=True`; a state already made without it would leave every process computing everything, so that is
    refused.
    """
    import os

    import torch
    from accelerate import PartialState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    st = PartialState(cpu=not torch.cuda.is_available()) if world > 1 else PartialState()
    if world > 1 and st.num_processes != world:
        raise RuntimeError(
            f"WORLD_SIZE={world} but accelerate's state has {st.num_processes} process(es): it was initialised before "
            "without multi-process support (on CPU, create `PartialState(cpu=True)` first)"
        )


def is_main_process() -> bool:
    return state().is_main_process


def map_across_ranks(fn: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T]) -> list[R]:
    """Apply `fn` to a contiguous share of `items` on every rank and return all results, in `items` order, on
    every rank.

    `fn` receives a slice of `items` and must return one result per item. With one process this is `fn(items)`.
    """
    st = state()
    items = list(items)
    if st.num_processes == 1:
        out = list(fn(items))
        _check_len(out, items)
        return out
    from accelerate.utils import gather_object

    with st.split_between_processes(items) as local:
        local = list(local)
        results = list(fn(local)) if local else []
        _check_len(results, local)
    # gather_object concatenates the per-rank lists in rank order; split_between_processes hands out contiguous
    # slices in rank order, so the concatenation is in the original order.
    return list(gather_object(results))


def broadcast(obj: T) -> T:
    """The main process's `obj`, on every rank."""
    st = state()
    if st.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj if st.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def _check_len(results: Sequence[Any], items: Sequence[Any]) -> None:
    if len(results) != len(items):
        raise ValueError(f"the mapped function returned {len(results)} results for {len(items)} items")


def shutdown() -> None:
    """Wait for every rank, then tear the process group down, so that no rank exits while a gloo/NCCL thread
    is still running (which aborts it with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
