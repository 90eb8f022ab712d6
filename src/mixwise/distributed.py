"""Splitting scoring work across processes, agreeing on one plan, and giving selectors an unsharded model.

All helpers work unchanged in a single process (they become no-ops) and under `accelerate launch` or
`torchrun` (they use accelerate's `PartialState`, which reads the launcher's environment).

**Equal collectives.** Every helper makes the same collective calls, in the same order, on every rank — whatever
the number of items (fewer items than processes included), whatever share a rank gets and whether or not its work
raised: [`map_across_ranks`] makes one gather per call (a rank with nothing to do still takes part), and an
exception on one rank is handed to the others through that same gather, so that *every* rank raises it instead of
the others waiting forever at the next collective ([`run_agreed`] does the same for work that returns nothing).
With `lockstep=True` every rank's `fn` also receives the same number of items (the shares are padded with repeats,
whose results are dropped), for functions that themselves make a collective per item or per batch.

**Sharded models.** A model sharded by FSDP2 (`torch.distributed.fsdp.fully_shard`, as accelerate shards it with
`fsdp_version: 2`) or by DeepSpeed ZeRO-3 holds only a slice of every parameter on each rank, so any forward pass
is itself a sequence of collectives that every rank must make in lockstep, on the same modules in the same order.
Selection work is split by rows (each rank scores other rows, batches of other shapes, skips other bad rows), so it
cannot run on the sharded model. [`unsharded`] gives the selector what it needs instead: a plain replica of the
model — the same classes, the same module tree, the full parameters gathered once from the shards (one all-gather
per parameter, in `named_parameters()` order, the same on every rank) onto the rank's own device — which every
rank then uses like an unsharded (DDP) run would, so that the selection is the same as an unsharded run's. The
replica costs the full model's parameters on every device for the duration of the selection (what every process of
a DDP run holds all the time); it is freed before training starts. FSDP1 (`FullyShardedDataParallel`) is refused
with a clear error on every rank.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "RankError",
    "barrier",
    "broadcast",
    "gather_agreed",
    "init_state",
    "is_main_process",
    "map_across_ranks",
    "pack_error",
    "replicate",
    "run_agreed",
    "share",
    "sharding",
    "long_wait_group",
    "release_long_wait_group",
    "shutdown",
    "state",
    "unpack_error",
    "unsharded",
    "wait_for_path",
]


def state():
    from accelerate import PartialState

    return PartialState()


def init_state() -> None:
    """Start accelerate's state for the launcher's processes (`torchrun` / `accelerate launch`).

    On a CPU-only machine under `torchrun`, accelerate only sets up the (gloo) process group when asked with
    `cpu=True`; a state already made without it would leave every process computing everything, so that is
    refused.
    """
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


# ---------------------------------------------------------------------------------------------------------------------
# Work splitting with equal collectives
# ---------------------------------------------------------------------------------------------------------------------


def share(n_items: int, rank: int, world: int) -> tuple[int, int]:
    """`[start, stop)` of rank `rank`'s contiguous share of `n_items`: the first `n_items mod world` ranks get
    `ceil(n_items / world)` items, the others `floor` (so shares differ by at most one, and ranks past the end get
    an empty share)."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    base, extra = divmod(n_items, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class RankError(RuntimeError):
    """Raised on every rank when the work of another rank raised an exception that cannot be rebuilt here."""


def pack_error(err: BaseException | None) -> bytes | None:
    """The exception as bytes another rank can rebuild: its class, `args` and attributes (exceptions whose
    constructor takes other arguments than `args`, such as `DataError`, do not survive a plain pickle); rebuilt by
    [`unpack_error`]."""
    if err is None:
        return None
    try:
        payload = pickle.dumps((type(err), err.args, dict(vars(err))))
        pickle.loads(payload)  # it must come back, too
        return payload
    except Exception:  # an exception carrying something that does not pickle
        return pickle.dumps((RankError, (f"{type(err).__name__}: {err}",), {}))


def unpack_error(payload: bytes, where: str) -> BaseException:
    """The exception [`pack_error`] packed, noting `where` it was raised."""
    cls, args, attrs = pickle.loads(payload)
    err = cls.__new__(cls)
    BaseException.__init__(err, *args)
    err.__dict__.update(attrs)
    err.add_note(f"(raised in {where})")
    return err


def _raise_first(errors: Sequence[bytes | None], own: BaseException | None) -> None:
    """Raise, on every rank, the exception of the lowest failing rank (a rank that failed itself raises its own)."""
    if own is not None:
        raise own
    for rank, payload in enumerate(errors):
        if payload is not None:
            raise unpack_error(payload, f"rank {rank}; every rank raises it") from None


def gather_agreed(obj: Any, error: BaseException | None = None) -> list[Any]:
    """`obj` of every rank, in rank order, on every rank — one collective — then, if `error` (this rank's
    exception, caught by the caller) or another rank's is set, that exception raised on every rank (the lowest
    failing rank's; a failing rank raises its own)."""
    st = state()
    if st.num_processes == 1:
        if error is not None:
            raise error
        return [obj]
    from accelerate.utils import gather_object

    gathered = list(gather_object([(obj, pack_error(error))]))
    _raise_first([e for _, e in gathered], error)
    return [o for o, _ in gathered]


def map_across_ranks(fn: Callable[[Sequence[T]], Sequence[R]], items: Sequence[T], lockstep: bool = False) -> list[R]:
    """Apply `fn` to a contiguous share of `items` on every rank and return all results, in `items` order, on
    every rank.

    `fn` receives a slice of `items` and must return one result per item. With one process this is `fn(items)`.
    `items` must be the same on every rank. Shares differ by at most one item ([`share`]); every rank makes exactly
    one collective (a gather) per call, also with an empty share, and an exception raised by `fn` on any rank is
    raised on every rank.

    Args:
        lockstep: give every rank's `fn` exactly `ceil(len(items) / world)` items, padding short shares with
            repeats of other items (their results are dropped), so that an `fn` that makes collectives of its own
            (e.g. forward passes of a sharded model, one per item) makes as many on every rank. Shares are padded
            even when they are empty (fewer items than processes).
    """
    st = state()
    items = list(items)
    if st.num_processes == 1:
        out = list(fn(items))
        _check_len(out, items)
        return out
    start, stop = share(len(items), st.process_index, st.num_processes)
    local = items[start:stop]
    todo = list(local)
    if lockstep and items:
        width = math.ceil(len(items) / st.num_processes)
        todo += [items[(stop + k) % len(items)] for k in range(width - len(local))]
    results: list[Any] = []
    error: BaseException | None = None
    try:
        if todo:
            results = list(fn(todo))
            _check_len(results, todo)
            results = results[: len(local)]
    except Exception as err:  # handed to every rank through the gather below, then raised everywhere
        error, results = err, []
    # shares are contiguous and in rank order, so the concatenation is in the original order
    return [r for part in gather_agreed(results, error) for r in part]


def run_agreed(fn: Callable[[], T]) -> T:
    """Run `fn()` on every rank, then agree: if it raised on any rank, raise that exception on every rank (one
    collective, made whether or not `fn` raised). Returns `fn()`'s result on every rank when none raised."""
    st = state()
    if st.num_processes == 1:
        return fn()
    result, error = None, None
    try:
        result = fn()
    except Exception as err:
        error = err
    gather_agreed(None, error)
    return result


def broadcast(obj: T) -> T:
    """The main process's `obj`, on every rank."""
    st = state()
    if st.num_processes == 1:
        return obj
    from accelerate.utils import broadcast_object_list

    box = [obj if st.is_main_process else None]
    broadcast_object_list(box, from_process=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (a no-op in one process)."""
    st = state()
    if st.num_processes > 1:
        st.wait_for_everyone()


def wait_for_path(path: str | os.PathLike, timeout: float | None = None, poll: float = 0.5, what: str = "") -> None:
    """Wait until `path` exists, polling the file system (not a collective, so no collective time-out applies:
    ranks waiting for long work of the main process, such as a warm-up, use it). On a shared file system a file
    made on another node can take a moment to become visible. Raises `TimeoutError` after `timeout` seconds."""
    path = os.fspath(path)
    start = time.monotonic()
    while not os.path.exists(path):
        if timeout is not None and time.monotonic() - start > timeout:
            raise TimeoutError(f"{what or path} did not appear within {timeout:.0f}s ({path})")
        time.sleep(poll)


def _check_len(results: Sequence[Any], items: Sequence[Any]) -> None:
    if len(results) != len(items):
        raise ValueError(f"the mapped function returned {len(results)} results for {len(items)} items")


# ---------------------------------------------------------------------------------------------------------------------
# Sharded models → an unsharded replica
# ---------------------------------------------------------------------------------------------------------------------


def _is_zero3(p: Any) -> bool:
    return hasattr(p, "ds_id") and hasattr(p, "ds_status")


def _is_dtensor(p: Any) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - every supported torch has it
        return False
    return isinstance(p, DTensor)


def sharding(model: Any) -> str | None:
    """How `model`'s parameters are sharded: `"fsdp2"` (DTensor parameters: FSDP2's `fully_shard`, or a model
    sharded at load time), `"zero3"` (DeepSpeed ZeRO-3 partitioned parameters), `"fsdp1"` (wrapped in
    `FullyShardedDataParallel`) or `None` (every parameter whole on this rank: one process, DDP, ZeRO-1/2)."""
    if model is None:
        return None
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover
        FullyShardedDataParallel = ()  # noqa: N806
    if any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
        return "fsdp1"
    for p in model.parameters():
        if _is_dtensor(p):
            return "fsdp2"
        if _is_zero3(p):
            return "zero3"
    return None


def _gather_full(p: Any) -> Any:
    """The whole parameter `p` on this rank's device (a collective for a sharded one)."""
    if _is_dtensor(p):
        return p.full_tensor().detach()
    if _is_zero3(p):
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=None):
            return p.data.detach().clone()
    return p.detach()


_SHARDING_ATTRIBUTES = ("_is_fsdp_managed_module", "_fsdp_use_orig_params")
_HOOK_DICTS_BY_ID = ("_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def _installed_by_sharding(hook: Any) -> bool:
    func = getattr(hook, "func", hook)  # functools.partial
    func = getattr(func, "__func__", func)  # bound method
    module = getattr(func, "__module__", None) or type(func).__module__ or ""
    return module.startswith(("torch.distributed", "deepspeed"))


def _unsharded_class(cls: type) -> type:
    """FSDP2 swaps a module's class for `FSDP<cls>` (bases `FSDPModule, cls`): the class it had before."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return cls
    while issubclass(cls, FSDPModule):
        cls = next(b for b in cls.__bases__ if b is not FSDPModule)
    return cls


def _replica(module: Any, params: dict[int, Any], memo: dict[int, Any]) -> Any:
    """A plain copy of `module`'s tree: its original classes and attributes, the gathered parameters `params`
    (by id of the sharded parameter), cloned buffers, and no hook, state or method wrapper installed by FSDP or
    DeepSpeed."""
    import collections

    import torch

    if id(module) in memo:
        return memo[id(module)]
    cls = _unsharded_class(type(module))
    clone = cls.__new__(cls)
    memo[id(module)] = clone
    attrs = dict(module.__dict__)
    for name in list(attrs):
        if name.startswith("__composable_api_state_key") or name in _SHARDING_ATTRIBUTES:
            del attrs[name]  # FSDP2's per-module state
        elif name == "forward" or (not name.startswith("_") and callable(getattr(cls, name, None))):
            del attrs[
                name
            ]  # an instance wrapper around a method (trainers' forward, FSDP's `generate`): use the class's
    for name, hooks in list(attrs.items()):
        if name.endswith("hooks") and isinstance(hooks, dict):
            attrs[name] = collections.OrderedDict((k, h) for k, h in hooks.items() if not _installed_by_sharding(h))
    kept = {k for name in ("_forward_hooks", "_forward_pre_hooks") for k in attrs.get(name, {})}
    for name in _HOOK_DICTS_BY_ID:
        if isinstance(attrs.get(name), dict):
            attrs[name] = collections.OrderedDict((k, v) for k, v in attrs[name].items() if k in kept)
    attrs["_parameters"] = {
        k: None if p is None else _as_parameter(params[id(p)], p, memo) for k, p in module._parameters.items()
    }
    attrs["_buffers"] = {k: None if b is None else b.detach().clone() for k, b in module._buffers.items()}
    attrs["_modules"] = {k: None if m is None else _replica(m, params, memo) for k, m in module._modules.items()}
    clone.__dict__.update(attrs)
    assert isinstance(clone, torch.nn.Module)
    return clone


def _as_parameter(full: Any, original: Any, memo: dict[int, Any]) -> Any:
    import torch

    key = -id(original)  # tied parameters (one object in two modules) stay one parameter in the replica
    if key not in memo:
        memo[key] = torch.nn.Parameter(full, requires_grad=original.requires_grad)
    return memo[key]


def replicate(model: Any) -> Any:
    """A plain, unsharded replica of a sharded `model` on every rank (see the module docstring); `model` itself when
    it is not sharded. A collective (one gather per sharded parameter): call it on every rank."""
    kind = sharding(model)
    if kind is None:
        return model
    if kind == "fsdp1":
        raise NotImplementedError(
            "mixwise selects with a model wrapped by FSDP1 (FullyShardedDataParallel) only through a model of its "
            "own; use FSDP2 (accelerate `fsdp_version: 2`, as in `mixwise recipes copy accelerate/fsdp.yaml`) or DeepSpeed ZeRO-3, "
            "or give the selector `model_path`"
        )
    params = {id(p): _gather_full(p) for p in model.parameters()}  # same order on every rank
    replica = _replica(model, params, {})
    replica.train(model.training)
    return replica


@contextlib.contextmanager
def unsharded(model: Any) -> Iterator[Any]:
    """`with unsharded(model) as plain:` — `model` itself when it is not sharded; else a plain replica gathered
    from the shards on every rank ([`replicate`]), freed when the block ends. Enter it on every rank."""
    if sharding(model) is None:
        yield model
        return
    replica = replicate(model)
    try:
        yield replica
    finally:
        del replica
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


_LONG_WAIT_GROUP: Any = None


def long_wait_group() -> Any:
    """A gloo group with a one-day time-out, for ranks that wait in a collective on long work of the main process
    (validation of a large pool). Made once per process, on every rank (creating it is a collective); released by
    [`shutdown`] or, failing that, at interpreter exit — a gloo group still alive when the interpreter tears down
    aborts the process ("terminate called without an active exception")."""
    global _LONG_WAIT_GROUP
    if _LONG_WAIT_GROUP is None:
        import atexit
        import datetime

        import torch.distributed as dist

        _LONG_WAIT_GROUP = dist.new_group(backend="gloo", timeout=datetime.timedelta(days=1))
        atexit.register(release_long_wait_group)
    return _LONG_WAIT_GROUP


def release_long_wait_group() -> None:
    """Destroy [`long_wait_group`]'s group if it was made (idempotent; errors at teardown are ignored)."""
    global _LONG_WAIT_GROUP
    group, _LONG_WAIT_GROUP = _LONG_WAIT_GROUP, None
    if group is None:
        return
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group(group)
    except Exception:  # the default group is already gone: nothing left to release
        pass


def shutdown() -> None:
    """Wait for every rank, then tear the process groups down, so that no rank exits while a gloo/NCCL thread
    is still running (which aborts it with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        release_long_wait_group()
        dist.destroy_process_group()
