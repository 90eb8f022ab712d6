"""Writing results to disk so that a crash never leaves half a file, and JSON for numpy values.

Every file mixwise writes that a later run reads back (manifests, markers, caches, logs' summaries, datasets) goes
through these helpers: the content is written to a temporary name next to the target (suffixed with the process
id, so that two processes never share one) and then renamed over it with `os.replace`, which is atomic on POSIX
file systems. A reader therefore sees either the old file or the complete new one.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import numpy as np

__all__ = ["atomic_save_dataset", "atomic_savez", "atomic_write_json", "atomic_write_text", "json_default"]


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}"


def atomic_write_text(path: str | os.PathLike, text: str) -> str:
    """Write `text` to `path` atomically; returns the path."""
    path = os.fspath(path)
    tmp = _tmp(path)
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def json_default(o: Any) -> Any:
    """`json.dumps(default=...)` for numpy scalars and arrays and paths; anything else raises `TypeError`."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"cannot serialize {type(o).__name__} as JSON")


def atomic_write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2, **kwargs: Any) -> str:
    """`json.dumps(payload)` (numpy values converted by [`json_default`]) written atomically; returns the path."""
    kwargs.setdefault("default", json_default)
    return atomic_write_text(path, json.dumps(payload, indent=indent, **kwargs))


def atomic_savez(path: str | os.PathLike, **arrays: np.ndarray) -> str:
    """`numpy.savez(path, **arrays)` written atomically (`path` must end in `.npz`); returns the path."""
    path = os.fspath(path)
    if not path.endswith(".npz"):
        raise ValueError(f"an .npz path is needed, got {path!r}")
    tmp = _tmp(path) + ".npz"  # numpy appends .npz to names without it
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def atomic_save_dataset(dataset: Any, path: str | os.PathLike) -> str:
    """`dataset.save_to_disk` into a temporary directory, then swapped in place of `path`; returns the path."""
    path = os.fspath(path)
    tmp = _tmp(path)
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    dataset.save_to_disk(tmp)
    if os.path.exists(path):
        shutil.rmtree(path)
    os.replace(tmp, path)
    return path
