"""A sharded, memory-mapped, resumable store of per-sample features (gradients or hidden states).

ICONS reports 103 GB of stored gradients for LLaVA-665K; a 7M-sample pool does not fit in memory. A datastore is a
directory:

    manifest.json            identity (model id/revision, adapter hash, checkpoint, projector type/seed/dim,
                             gradient mode, dataset fingerprint), sizes, shard table, row-id hash
    row_ids.npy              int64: which dataset row each store row holds (in order)
    features-00000.npy ...   float16 (rows, d'): unit-normalised features, preallocated, memory-mapped
    norms-00000.npy ...      float32 (rows,): the norm before normalisation (NaN marks a skipped row)
    done/chunk-000000.json   one marker per finished chunk (with that chunk's skipped rows)

* **Resumable.** Rows are written in fixed chunks (`chunk_size` rows). A chunk is written, flushed, then marked done
  (marker written to a temporary file and renamed, which is atomic). A run killed at any point and restarted
  recomputes only the chunks without a marker; because a chunk's rows are always featurized in the same batches, the
  result is byte-identical to an uninterrupted run (tested with a real SIGKILL).
* **Many processes.** Chunk `c` belongs to rank `c mod world`; every rank writes its own rows of the same files
  (disjoint byte ranges of shared memory maps), so 1 or N processes give the same bytes (tested with 2 processes).
* **Refuses mismatches.** Opening an existing store with a different identity (model, adapter, checkpoint,
  projector, gradient mode, dataset fingerprint, row ids, sizes) raises [`DatastoreMismatch`] naming the field and
  both values.
* **Reading** streams blocks with `pread` into a reusable buffer (no file mapping), so reading a 1.6 GB store keeps
  the resident set small (see `benchmarks/influence.py`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..files import atomic_write_text
from ..fingerprint import short_hash

MANIFEST = "manifest.json"
FORMAT = "mixwise-datastore"
VERSION = 1
DONE_DIR = "done"


class DatastoreMismatch(ValueError):
    """An existing datastore was built for something else (another model, adapter, projector or dataset)."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _canonical(obj: Any) -> Any:
    """JSON round trip: tuples become lists, so that stored and given identities compare equal."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def row_ids_hash(row_ids: np.ndarray) -> str:
    """The full sha256 of the int64 row ids, recorded in the manifest."""
    return short_hash(np.ascontiguousarray(row_ids, dtype=np.int64), 64)


@dataclass
class FillReport:
    """What one process did while filling a store."""

    computed: list[int] = field(default_factory=list)  # chunk ids computed by this process
    skipped: list[dict[str, Any]] = field(default_factory=list)


class Datastore:
    """A feature store on disk (see the module docstring). Create with [`Datastore.create`] or
    [`Datastore.open_or_create`], reopen with [`Datastore.open`]."""

    def __init__(self, path: str | os.PathLike, manifest: Mapping[str, Any]):
        self.path = os.fspath(path)
        self.manifest = dict(manifest)
        self.n_rows: int = int(manifest["n_rows"])
        self.dim: int = int(manifest["dim"])
        self.chunk_size: int = int(manifest["chunk_size"])
        self.shard_size: int = int(manifest["shard_size"])
        self.n_chunks: int = int(manifest["n_chunks"])
        self.identity: dict[str, Any] = dict(manifest["identity"])
        self._maps: dict[int, tuple[np.memmap, np.memmap]] = {}
        self._offsets: dict[int, tuple[int, int]] = {}
        self._row_ids: np.ndarray | None = None

    # -- creation / opening ---------------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        n_rows: int,
        dim: int,
        identity: Mapping[str, Any],
        row_ids: Sequence[int] | np.ndarray | None = None,
        chunk_size: int = 256,
        shard_size: int | None = None,
    ) -> Datastore:
        """Create an empty store with preallocated shards. `row_ids[k]` is the dataset row that store row `k` holds
        (default `0..n_rows-1`). `shard_size` (rows per shard file) is rounded up to a multiple of `chunk_size`."""
        path = os.fspath(path)
        if n_rows <= 0:
            raise ValueError(f"a datastore needs at least one row, got n_rows={n_rows}")
        if chunk_size <= 0 or dim <= 0:
            raise ValueError(f"chunk_size and dim must be positive (got {chunk_size}, {dim})")
        if os.path.exists(os.path.join(path, MANIFEST)):
            raise FileExistsError(f"a datastore already exists at {path}; open it instead")
        ids = np.arange(n_rows, dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
        if ids.shape != (n_rows,):
            raise ValueError(f"row_ids has shape {ids.shape}, expected ({n_rows},)")
        shard_size = shard_size or max(chunk_size, (1 << 16) // chunk_size * chunk_size)
        shard_size = -(-shard_size // chunk_size) * chunk_size
        n_shards = -(-n_rows // shard_size)
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise FileExistsError(f"{path} exists and is not a datastore; choose an empty or new directory")
        tmp = f"{path}.creating-{os.getpid()}"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(os.path.join(tmp, DONE_DIR))
        np.save(os.path.join(tmp, "row_ids.npy"), ids)
        shards = []
        for s in range(n_shards):
            start, stop = s * shard_size, min((s + 1) * shard_size, n_rows)
            feats, norms = f"features-{s:05d}.npy", f"norms-{s:05d}.npy"
            np.lib.format.open_memmap(os.path.join(tmp, feats), "w+", np.float16, (stop - start, dim)).flush()
            np.lib.format.open_memmap(os.path.join(tmp, norms), "w+", np.float32, (stop - start,)).flush()
            shards.append({"features": feats, "norms": norms, "start": start, "stop": stop})
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "identity": _canonical(dict(identity)),
            "n_rows": int(n_rows),
            "dim": int(dim),
            "chunk_size": int(chunk_size),
            "shard_size": int(shard_size),
            "n_chunks": -(-n_rows // chunk_size),
            "dtype": "float16",
            "norm_dtype": "float32",
            "row_ids_sha256": row_ids_hash(ids),
            "shards": shards,
        }
        atomic_write_text(os.path.join(tmp, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        os.replace(tmp, path)
        return cls(path, manifest)

    @classmethod
    def open(cls, path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> Datastore:
        """Open an existing store; with `expect`, refuse it unless every given identity field matches."""
        path = os.fspath(path)
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"no datastore at {path} ({MANIFEST} missing)")
        with open(mpath) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not a mixwise datastore manifest")
        if manifest.get("version") != VERSION:
            raise DatastoreMismatch(
                f"datastore at {path} has format version {manifest.get('version')}, need {VERSION}"
            )
        store = cls(path, manifest)
        if expect is not None:
            store.check(expect)
        return store

    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        n_rows: int,
        dim: int,
        identity: Mapping[str, Any],
        row_ids: Sequence[int] | np.ndarray | None = None,
        chunk_size: int = 256,
        shard_size: int | None = None,
    ) -> Datastore:
        """Open the store at `path` if it exists — refusing it if it was built for anything else (identity, sizes,
        row ids) — else create it."""
        if os.path.exists(os.path.join(os.fspath(path), MANIFEST)):
            store = cls.open(path, expect=identity)
            ids = np.arange(n_rows, dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
            given = {"n_rows": int(n_rows), "dim": int(dim), "chunk_size": int(chunk_size)}
            for key, value in given.items():
                if store.manifest[key] != value:
                    raise DatastoreMismatch(
                        f"datastore at {store.path} has {key}={store.manifest[key]}, but {value} was asked for; use "
                        "another directory or delete this one"
                    )
            if store.manifest["row_ids_sha256"] != row_ids_hash(ids):
                raise DatastoreMismatch(
                    f"datastore at {store.path} holds other rows (row ids differ) than the ones asked for"
                )
            return store
        return cls.create(path, n_rows, dim, identity, row_ids, chunk_size, shard_size)

    def check(self, expect: Mapping[str, Any]) -> None:
        """Raise [`DatastoreMismatch`] naming every identity field that differs from `expect`."""
        stored, given = _flatten(self.identity), _flatten(_canonical(dict(expect)))
        diffs = [
            f"{key}: stored {stored.get(key, '<absent>')!r}, given {value!r}"
            for key, value in given.items()
            if stored.get(key, "<absent>") != value
        ]
        if diffs:
            raise DatastoreMismatch(
                f"datastore at {self.path} was built for something else — " + "; ".join(diffs) + ". Use another "
                "directory, or delete this one to recompute."
            )

    # -- layout -------------------------------------------------------------------------------------------------------

    @property
    def row_ids(self) -> np.ndarray:
        if self._row_ids is None:
            self._row_ids = np.load(os.path.join(self.path, "row_ids.npy"))
        return self._row_ids

    def chunk_range(self, c: int) -> tuple[int, int]:
        if not 0 <= c < self.n_chunks:
            raise IndexError(f"chunk {c} out of range [0, {self.n_chunks})")
        return c * self.chunk_size, min((c + 1) * self.chunk_size, self.n_rows)

    def _marker(self, c: int) -> str:
        return os.path.join(self.path, DONE_DIR, f"chunk-{c:06d}.json")

    def done_chunks(self) -> list[int]:
        names = os.listdir(os.path.join(self.path, DONE_DIR))
        return sorted(int(n[6:12]) for n in names if n.startswith("chunk-") and n.endswith(".json"))

    @property
    def complete(self) -> bool:
        return len(self.done_chunks()) == self.n_chunks

    def pending(self, rank: int = 0, world: int = 1) -> list[int]:
        """Unfinished chunks owned by `rank` (chunk `c` belongs to rank `c mod world`)."""
        done = set(self.done_chunks())
        return [c for c in range(rank, self.n_chunks, world) if c not in done]

    def _shard(self, s: int) -> dict[str, Any]:
        return self.manifest["shards"][s]

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """`(shard, local start, local stop)` pieces covering store rows `[start, stop)`."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for a store of {self.n_rows} rows")
        row = start
        while row < stop:
            s = row // self.shard_size
            sh = self._shard(s)
            end = min(stop, sh["stop"])
            yield s, row - sh["start"], end - sh["start"]
            row = end

    def _open_maps(self, s: int) -> tuple[np.memmap, np.memmap]:
        if s not in self._maps:
            sh = self._shard(s)
            feats = np.load(os.path.join(self.path, sh["features"]), mmap_mode="r+")
            norms = np.load(os.path.join(self.path, sh["norms"]), mmap_mode="r+")
            self._maps[s] = (feats, norms)
        return self._maps[s]

    # -- writing --------------------------------------------------------------------------------------------------------

    def write(self, start: int, features: np.ndarray, norms: np.ndarray) -> None:
        """Write unit features (cast to float16) and norms for rows `[start, start + len(features))`, flushed."""
        features = np.asarray(features)
        norms = np.asarray(norms, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim or norms.shape != (features.shape[0],):
            raise ValueError(f"expected features ({len(norms)}, {self.dim}) and norms, got {features.shape}")
        k = 0
        for s, lo, hi in self._pieces(start, start + features.shape[0]):
            fm, nm = self._open_maps(s)
            fm[lo:hi] = features[k : k + hi - lo].astype(np.float16)
            nm[lo:hi] = norms[k : k + hi - lo]
            fm.flush()
            nm.flush()
            k += hi - lo

    def mark_done(self, c: int, info: Mapping[str, Any] | None = None) -> None:
        """Mark chunk `c` finished (atomically); `info` (e.g. its skipped rows) is kept in the marker."""
        start, stop = self.chunk_range(c)
        payload = {"chunk": c, "rows": [start, stop], **(info or {})}
        atomic_write_text(self._marker(c), json.dumps(payload, sort_keys=True, default=str))

    def close(self) -> None:
        for fm, nm in self._maps.values():
            fm.flush()
            nm.flush()
        self._maps.clear()

    # -- reading ----------------------------------------------------------------------------------------------------------

    def _offset(self, s: int) -> tuple[int, int]:
        if s not in self._offsets:
            sh = self._shard(s)
            f = np.load(os.path.join(self.path, sh["features"]), mmap_mode="r")
            n = np.load(os.path.join(self.path, sh["norms"]), mmap_mode="r")
            self._offsets[s] = (int(f.offset), int(n.offset))
            del f, n
        return self._offsets[s]

    def read(
        self, start: int, stop: int, out: np.ndarray | None = None, norms_out: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows `[start, stop)`: `(float16 unit features, float32 norms)`, read with `pread` (optionally into
        caller buffers, so that a streaming reader allocates nothing per block)."""
        n = stop - start
        feats = np.empty((n, self.dim), np.float16) if out is None else out[:n]
        norms = np.empty(n, np.float32) if norms_out is None else norms_out[:n]
        k = 0
        for s, lo, hi in self._pieces(start, stop):
            sh = self._shard(s)
            foff, noff = self._offset(s)
            _pread_into(os.path.join(self.path, sh["features"]), foff + lo * self.dim * 2, feats[k : k + hi - lo])
            _pread_into(os.path.join(self.path, sh["norms"]), noff + lo * 4, norms[k : k + hi - lo])
            k += hi - lo
        return feats, norms

    def iter_blocks(self, block_rows: int = 65536) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """Stream `(start, stop, float16 features, float32 norms)` blocks; the arrays are reused between blocks."""
        fbuf = np.empty((min(block_rows, self.n_rows), self.dim), np.float16)
        nbuf = np.empty(min(block_rows, self.n_rows), np.float32)
        for start in range(0, self.n_rows, block_rows):
            stop = min(start + block_rows, self.n_rows)
            feats, norms = self.read(start, stop, fbuf, nbuf)
            yield start, stop, feats, norms

    def load(self) -> tuple[np.ndarray, np.ndarray]:
        """All rows in memory (small stores: validation sets, tests)."""
        return self.read(0, self.n_rows)

    def skipped(self) -> list[dict[str, Any]]:
        """Skipped rows recorded in the chunk markers."""
        out = []
        for c in self.done_chunks():
            with open(self._marker(c)) as f:
                out += json.load(f).get("skipped", [])
        return out

    def __repr__(self) -> str:
        return f"Datastore({self.path!r}, rows={self.n_rows}, dim={self.dim}, done={len(self.done_chunks())}/{self.n_chunks})"


def shared_store(
    path: str | os.PathLike,
    n_rows: int,
    dim: int,
    identity: Mapping[str, Any],
    row_ids: Sequence[int] | np.ndarray | None = None,
    chunk_size: int = 256,
    shard_size: int | None = None,
) -> Datastore:
    """[`Datastore.open_or_create`] in every process: the main process creates (or checks) the store first, the
    others then open it and check its identity."""
    from .. import distributed

    st = distributed.state()
    if st.num_processes == 1:
        return Datastore.open_or_create(path, n_rows, dim, identity, row_ids, chunk_size, shard_size)
    store, error = None, None
    if st.is_main_process:
        try:
            store = Datastore.open_or_create(path, n_rows, dim, identity, row_ids, chunk_size, shard_size)
        except (OSError, ValueError) as err:  # every rank raises it, instead of the others waiting forever
            error = err
    error = distributed.broadcast(error)
    if error is not None:
        raise error
    if store is None:
        store = Datastore.open(path, expect=identity)
    return store


def _pread_into(path: str, offset: int, out: np.ndarray) -> None:
    view = memoryview(out.reshape(-1).view(np.uint8))
    fd = os.open(path, os.O_RDONLY)
    try:
        got = 0
        while got < len(view):
            n = os.preadv(fd, [view[got:]], offset + got)
            if n <= 0:
                raise OSError(f"short read from {path} at offset {offset + got}")
            got += n
    finally:
        os.close(fd)


def fill_store(
    store: Datastore,
    get_rows: Callable[[np.ndarray], tuple[list[Mapping[str, Any]], list[tuple[str, int]]]],
    featurizer: Any,
    on_chunk: Callable[[str, int], None] | None = None,
    desc: str = "features",
    progress: bool = True,
) -> FillReport:
    """Compute this process's unfinished chunks of `store` and mark them done; then wait for the other processes.

    Args:
        store: the datastore (every process opens the same one).
        get_rows: `dataset row ids -> (rows, names)` with `names[i] = (source, row)` for error messages.
        featurizer: anything with `featurize_rows(rows, names, row_ids) -> FeatureResult`
            ([`mixwise.signals.gradients.GradientFeaturizer`], [`mixwise.signals.gradients.HiddenStateFeaturizer`]).
        on_chunk: called as `on_chunk("written", c)` after chunk `c`'s rows are written and flushed and
            `on_chunk("done", c)` after its marker (used by tests to kill a run at a chosen point).
    """
    import torch

    from .. import distributed
    from .projection import normalize

    st = distributed.state()
    rank, world = st.process_index, st.num_processes
    report = FillReport()
    pending = store.pending(rank, world)
    for c in tqdm(pending, desc=f"{desc} (rank {rank})" if world > 1 else desc, disable=not progress, unit="chunk"):
        start, stop = store.chunk_range(c)
        ids = store.row_ids[start:stop]
        rows, names = get_rows(ids)
        result = featurizer.featurize_rows(rows, names, ids.tolist())
        unit, norms = normalize(result.features)
        norms = norms.cpu()
        norms[~result.ok] = float("nan")
        store.write(start, unit.to(torch.float16).cpu().numpy(), norms.numpy())
        if on_chunk is not None:
            on_chunk("written", c)
        skipped = [{**s, "store_row": start + s.pop("position")} for s in (dict(x) for x in result.skipped)]
        store.mark_done(c, {"skipped": skipped})
        report.computed.append(c)
        report.skipped += skipped
        if on_chunk is not None:
            on_chunk("done", c)
    store.close()
    if world > 1:
        st.wait_for_everyone()
    missing = store.pending(0, 1)
    if missing:
        raise RuntimeError(f"datastore {store.path}: chunks {missing[:5]} are still unfinished after filling")
    return report
