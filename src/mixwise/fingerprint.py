"""Stable identities: seeds, short hashes, transform fingerprints and model ids.

Everything here is a pure function of its arguments, identical in every process, rerun and machine (sha256, never
Python's salted `hash`), because seeds decide which rows are drawn and fingerprints decide which cached signals and
datastores are reused.

* [`stable_int`]: an integer from any mix of strings and numbers (the one hash every seed in mixwise derives from);
* [`stable_seed`]: a `numpy.random.SeedSequence` for row draws and subsamples;
* [`derive_seed`]: a 63-bit `torch.Generator` seed (projection matrices, noise images);
* [`short_hash`]: a short hex digest of a JSON-able object or of an array's bytes (directory names, cache keys);
* [`transform_fingerprint`]: the explicit `datasets` fingerprint of a mixwise transform;
* [`model_id_of`] / [`model_dir_id`]: how a live model or a model directory is named in fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "derive_seed",
    "model_dir_id",
    "model_id_of",
    "short_hash",
    "stable_int",
    "stable_seed",
    "transform_fingerprint",
]


def stable_int(*parts: object, bits: int = 64) -> int:
    """The low `bits` bits of the little-endian integer made of the first 8 bytes of
    `sha256("\\x1f".join(str(p) for p in parts))`."""
    if not 0 < bits <= 64:
        raise ValueError(f"bits must be in (0, 64], got {bits}")
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << bits) - 1)


def derive_seed(*parts: object) -> int:
    """A 63-bit seed for `torch.Generator.manual_seed` (which takes a signed 64-bit integer)."""
    return stable_int(*parts, bits=63)


def stable_seed(*parts: Any) -> np.random.SeedSequence:
    """A seed sequence of one 32-bit word per part: an integer part as itself (mod 2^32), any other part as
    `stable_int(part, bits=32)`."""
    words = [int(p) & 0xFFFFFFFF if isinstance(p, int | np.integer) else stable_int(p, bits=32) for p in parts]
    return np.random.SeedSequence(words)


def short_hash(obj: Any, length: int = 10) -> str:
    """The first `length` hex digits of sha256 over `obj`: an array's raw bytes, `bytes` as they are, anything else
    as sorted-key JSON (non-JSON values by `str`)."""
    if isinstance(obj, np.ndarray):
        data = np.ascontiguousarray(obj).tobytes()
    elif isinstance(obj, bytes):
        data = obj
    else:
        data = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(data).hexdigest()[:length]


def transform_fingerprint(name: str, config: Mapping[str, Any], model_id: str | None, input_fingerprint: str) -> str:
    """sha256 of (name, config, model id, input fingerprint, mixwise version): stable across processes and runs.

    `datasets` fingerprints a transform by hashing the function and everything it closes over; with a model inside
    that is slow, and when something is unpicklable it falls back to a *random* fingerprint, which silently disables
    caching. mixwise passes this one instead.
    """
    from . import __version__

    payload = json.dumps(
        {"name": name, "config": config, "model": model_id, "input": input_fingerprint, "version": __version__},
        sort_keys=True,
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:40]


def model_id_of(model: Any) -> str | None:
    """`name_or_path@revision` of a transformers model (peft-wrapped or not), for fingerprints."""
    if model is None:
        return None
    config = getattr(model, "config", None)
    base = getattr(model, "get_base_model", None)
    if base is not None:
        config = getattr(base(), "config", config)
    if config is None:
        return type(model).__name__
    name = getattr(config, "_name_or_path", "") or type(model).__name__
    revision = getattr(config, "_commit_hash", None)
    return f"{name}@{revision}" if revision else name


def model_dir_id(path: str | os.PathLike) -> str:
    """A model directory's id for caches: its absolute path plus the size and mtime of its weight/config files (so
    that retraining into the same directory invalidates cached signals)."""
    path = os.path.abspath(os.fspath(path))
    stats = []
    for name in sorted(os.listdir(path)):
        if name.endswith((".safetensors", ".bin", ".json")):
            st = os.stat(os.path.join(path, name))
            stats.append(f"{name}:{st.st_size}:{int(st.st_mtime)}")
    return f"{path}@{hashlib.sha256('|'.join(stats).encode()).hexdigest()[:12]}"
