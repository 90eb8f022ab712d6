"""A resumable on-disk store of per-sample features (gradients or hidden states), safe on shared file systems.

ICONS reports 103 GB of stored gradients for LLaVA-665K; a 7M-sample pool does not fit in memory. A datastore is a
directory:

    manifest.json                 identity (model id/revision, adapter hash, checkpoint, projector type/seed/dim,
                                  gradient mode, dataset fingerprint), sizes, layout, row-id hash
    row_ids.npy                   int64: which dataset row each store row holds (in order)
    chunks/features-000000.npy    float16 (chunk rows, d'): unit-normalised features of chunk 0
    chunks/norms-000000.npy       float32 (chunk rows,): the norm before normalisation (NaN marks a skipped row)
    done/chunk-000000.json        one marker per finished chunk (with that chunk's skipped rows)

* **One writer per file.** Rows are computed in fixed chunks (`chunk_size` rows) and every chunk has files of its
  own, written by exactly one process — chunk `c` belongs to rank `c mod world` — to a temporary name, flushed to
  disk and renamed into place; no file is ever written by two processes. This is what network file systems (NFS)
  need, where multi-node runs keep their work dirs: they give close-to-open consistency per file, but page-granular
  write-back of one memory-mapped file from several hosts can lose another host's bytes. Readers see one store
  (rows are addressed by store row; the chunk files are an implementation detail) and read after every writer has
  finished. 1 process, N processes and N nodes give byte-identical stores (tested with a simulated 2-node
  `torchrun`).
* **Resumable.** A chunk is written, renamed, then marked done (marker written to a temporary file and renamed, which
  is atomic). A run killed at any point and restarted recomputes only the chunks without a marker; because a chunk's
  rows are always featurized in the same batches, the result is byte-identical to an uninterrupted run (tested with a
  real SIGKILL).
* **Refuses mismatches.** Opening an existing store with a different identity (model, adapter, checkpoint,
  projector, gradient mode, dataset fingerprint, row ids, sizes) raises [`DatastoreMismatch`] naming the field and
  both values.
* **Reading** streams blocks with `pread` into a reusable buffer (no file mapping), so reading a 1.6 GB store keeps
  the resident set small (see `benchmarks/influence.py`).
* **Older stores.** Stores written by mixwise 0.1 (format version 1: a few preallocated shard files that every rank
  memory-maps and writes its rows into) keep their paths and identities and are read as they are; an unfinished
  one is converted to the chunk layout by [`shared_store`] before it is filled (the rows it already holds are copied
  into chunk files, byte for byte), so that resuming it is as safe as a new store.
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
VERSION = 2  # the layout new stores get: one pair of files per chunk
SHARDS_VERSION = 1  # mixwise 0.1: shard files shared by every rank (read, and converted before filling)
DONE_DIR = "done"
CHUNK_DIR = "chunks"
LAYOUTS = {"chunks": VERSION, "shards": SHARDS_VERSION}

__all__ = [
    "CHUNK_DIR",
    "DONE_DIR",
    "FORMAT",
    "LAYOUTS",
    "MANIFEST",
    "VERSION",
    "Datastore",
    "DatastoreMismatch",
    "FillReport",
    "fill_store",
    "row_ids_hash",
    "shared_store",
]


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


def _manifest(identity: Mapping[str, Any], n_rows: int, dim: int, chunk_size: int, ids_hash: str) -> dict[str, Any]:
    """The manifest of a chunk-layout store (new stores and converted ones write exactly this)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "layout": "chunks",
        "identity": _canonical(dict(identity)),
        "n_rows": int(n_rows),
        "dim": int(dim),
        "chunk_size": int(chunk_size),
        "n_chunks": -(-int(n_rows) // int(chunk_size)),
        "dtype": "float16",
        "norm_dtype": "float32",
        "row_ids_sha256": ids_hash,
    }


def _write_manifest(path: str, manifest: Mapping[str, Any]) -> None:
    atomic_write_text(os.path.join(path, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True))


def _write_npy(path: str, array: np.ndarray) -> None:
    """`array` as an .npy file, written to a temporary name, flushed to disk and renamed over `path` (atomic: a
    reader sees no file or the complete one)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        np.lib.format.write_array(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _npy_data_offset(fd: int, path: str) -> int:
    """The byte offset of the data of the .npy file open as `fd` (read from its header)."""
    with os.fdopen(os.dup(fd), "rb") as f:
        f.seek(0)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"{path}: unsupported .npy format version {version}")
        return f.tell()


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
        self.version: int = int(manifest["version"])
        self.layout: str = "chunks" if self.version == VERSION else "shards"
        self.n_rows: int = int(manifest["n_rows"])
        self.dim: int = int(manifest["dim"])
        self.chunk_size: int = int(manifest["chunk_size"])
        self.shard_size: int | None = int(manifest["shard_size"]) if "shard_size" in manifest else None
        self.n_chunks: int = int(manifest["n_chunks"])
        self.identity: dict[str, Any] = dict(manifest["identity"])
        self._maps: dict[int, tuple[np.memmap, np.memmap]] = {}
        self._offsets: dict[str, int] = {}
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
        layout: str = "chunks",
    ) -> Datastore:
        """Create an empty store. `row_ids[k]` is the dataset row that store row `k` holds (default
        `0..n_rows-1`).

        Args:
            layout: `"chunks"` (default: one pair of files per chunk, one writer per file) or `"shards"` (the
                mixwise 0.1 layout, kept for compatibility: preallocated shard files of `shard_size` rows, rounded up
                to a multiple of `chunk_size`, that every rank memory-maps; not safe on network file systems).
        """
        path = os.fspath(path)
        if layout not in LAYOUTS:
            raise ValueError(f"unknown datastore layout {layout!r}; expected one of {sorted(LAYOUTS)}")
        if n_rows <= 0:
            raise ValueError(f"a datastore needs at least one row, got n_rows={n_rows}")
        if chunk_size <= 0 or dim <= 0:
            raise ValueError(f"chunk_size and dim must be positive (got {chunk_size}, {dim})")
        if os.path.exists(os.path.join(path, MANIFEST)):
            raise FileExistsError(f"a datastore already exists at {path}; open it instead")
        ids = np.arange(n_rows, dtype=np.int64) if row_ids is None else np.asarray(row_ids, dtype=np.int64)
        if ids.shape != (n_rows,):
            raise ValueError(f"row_ids has shape {ids.shape}, expected ({n_rows},)")
        if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
            raise FileExistsError(f"{path} exists and is not a datastore; choose an empty or new directory")
        tmp = f"{path}.creating-{os.getpid()}"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        os.makedirs(os.path.join(tmp, DONE_DIR))
        np.save(os.path.join(tmp, "row_ids.npy"), ids)
        if layout == "chunks":
            os.makedirs(os.path.join(tmp, CHUNK_DIR))
            manifest = _manifest(identity, n_rows, dim, chunk_size, row_ids_hash(ids))
        else:
            manifest = cls._create_shards(tmp, n_rows, dim, identity, ids, chunk_size, shard_size)
        _write_manifest(tmp, manifest)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if os.path.isdir(path):  # an empty directory (checked above) may be replaced
            os.rmdir(path)
        os.replace(tmp, path)
        return cls(path, manifest)

    @staticmethod
    def _create_shards(tmp, n_rows, dim, identity, ids, chunk_size, shard_size) -> dict[str, Any]:
        shard_size = shard_size or max(chunk_size, (1 << 16) // chunk_size * chunk_size)
        shard_size = -(-shard_size // chunk_size) * chunk_size
        shards = []
        for s in range(-(-n_rows // shard_size)):
            start, stop = s * shard_size, min((s + 1) * shard_size, n_rows)
            feats, norms = f"features-{s:05d}.npy", f"norms-{s:05d}.npy"
            np.lib.format.open_memmap(os.path.join(tmp, feats), "w+", np.float16, (stop - start, dim)).flush()
            np.lib.format.open_memmap(os.path.join(tmp, norms), "w+", np.float32, (stop - start,)).flush()
            shards.append({"features": feats, "norms": norms, "start": start, "stop": stop})
        return {
            "format": FORMAT,
            "version": SHARDS_VERSION,
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

    @classmethod
    def open(cls, path: str | os.PathLike, expect: Mapping[str, Any] | None = None) -> Datastore:
        """Open an existing store (either layout); with `expect`, refuse it unless every given identity field
        matches."""
        path = os.fspath(path)
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(f"no datastore at {path} ({MANIFEST} missing)")
        with open(mpath) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{mpath} is not a mixwise datastore manifest")
        if manifest.get("version") not in (VERSION, SHARDS_VERSION):
            raise DatastoreMismatch(
                f"datastore at {path} has format version {manifest.get('version')}; this mixwise reads versions "
                f"{SHARDS_VERSION} and {VERSION}"
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
        layout: str = "chunks",
    ) -> Datastore:
        """Open the store at `path` if it exists — refusing it if it was built for anything else (identity, sizes,
        row ids) — else create it (with `layout`; an existing store keeps its own)."""
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
        return cls.create(path, n_rows, dim, identity, row_ids, chunk_size, shard_size, layout)

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

    def chunk_files(self, c: int) -> tuple[str, str]:
        """`(features, norms)` file paths of chunk `c` (chunk layout)."""
        base = os.path.join(self.path, CHUNK_DIR)
        return os.path.join(base, f"features-{c:06d}.npy"), os.path.join(base, f"norms-{c:06d}.npy")

    def _marker(self, c: int) -> str:
        return os.path.join(self.path, DONE_DIR, f"chunk-{c:06d}.json")

    def done_chunks(self) -> list[int]:
        names = os.listdir(os.path.join(self.path, DONE_DIR))
        return sorted(int(n[6:12]) for n in names if n.startswith("chunk-") and n.endswith(".json"))

    @property
    def complete(self) -> bool:
        return len(self.done_chunks()) == self.n_chunks

    def owner(self, c: int, world: int) -> int:
        """The rank that computes chunk `c` in a run of `world` processes (`c mod world`)."""
        return c % world

    def pending(self, rank: int = 0, world: int = 1) -> list[int]:
        """Unfinished chunks owned by `rank` ([`owner`])."""
        done = set(self.done_chunks())
        return [c for c in range(rank, self.n_chunks, world) if c not in done]

    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """`(file index, local start, local stop)` pieces covering store rows `[start, stop)`: chunks (chunk layout)
        or shards."""
        if not 0 <= start <= stop <= self.n_rows:
            raise IndexError(f"rows [{start}, {stop}) out of range for a store of {self.n_rows} rows")
        size = self.chunk_size if self.layout == "chunks" else self.shard_size
        row = start
        while row < stop:
            s = row // size
            end = min(stop, (s + 1) * size, self.n_rows)
            yield s, row - s * size, end - s * size
            row = end

    def _shard(self, s: int) -> dict[str, Any]:
        return self.manifest["shards"][s]

    def _open_maps(self, s: int) -> tuple[np.memmap, np.memmap]:
        if s not in self._maps:
            sh = self._shard(s)
            feats = np.load(os.path.join(self.path, sh["features"]), mmap_mode="r+")
            norms = np.load(os.path.join(self.path, sh["norms"]), mmap_mode="r+")
            self._maps[s] = (feats, norms)
        return self._maps[s]

    # -- writing --------------------------------------------------------------------------------------------------------

    def write(self, start: int, features: np.ndarray, norms: np.ndarray) -> None:
        """Write unit features (cast to float16) and norms for rows `[start, start + len(features))`, flushed. In the
        chunk layout the rows must be whole chunks (each is written into its own files, [`write_chunk`])."""
        features = np.asarray(features)
        norms = np.asarray(norms, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.dim or norms.shape != (features.shape[0],):
            raise ValueError(f"expected features ({len(norms)}, {self.dim}) and norms, got {features.shape}")
        stop = start + features.shape[0]
        if self.layout == "chunks":
            if start % self.chunk_size or (stop % self.chunk_size and stop != self.n_rows):
                raise ValueError(
                    f"rows [{start}, {stop}) are not whole chunks of {self.chunk_size} rows: a chunk-layout store is "
                    "written one chunk at a time"
                )
            for c in range(start // self.chunk_size, -(-stop // self.chunk_size)):
                lo, hi = self.chunk_range(c)
                self.write_chunk(c, features[lo - start : hi - start], norms[lo - start : hi - start])
            return
        k = 0
        for s, lo, hi in self._pieces(start, stop):
            fm, nm = self._open_maps(s)
            fm[lo:hi] = features[k : k + hi - lo].astype(np.float16)
            nm[lo:hi] = norms[k : k + hi - lo]
            fm.flush()
            nm.flush()
            k += hi - lo

    def write_chunk(self, c: int, features: np.ndarray, norms: np.ndarray) -> None:
        """Write chunk `c`'s unit features (cast to float16) and norms: in the chunk layout into the chunk's own two
        files (each written to a temporary name, flushed to disk and renamed into place), else into the shards."""
        start, stop = self.chunk_range(c)
        features = np.asarray(features)
        norms = np.asarray(norms, dtype=np.float32)
        if features.shape != (stop - start, self.dim) or norms.shape != (stop - start,):
            raise ValueError(
                f"chunk {c} holds {stop - start} rows of dim {self.dim}; got features {features.shape}, norms "
                f"{norms.shape}"
            )
        if self.layout != "chunks":
            self.write(start, features, norms)
            return
        fpath, npath = self.chunk_files(c)
        _write_npy(fpath, features.astype(np.float16, copy=False))
        _write_npy(npath, norms)

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

    def convert_to_chunks(self) -> Datastore:
        """Convert a shard-layout (version 1) store to the chunk layout in place — same path, identity, rows and
        markers — and return it reopened. The finished chunks' rows are copied byte for byte into chunk files
        first; then the manifest is replaced (atomically); then the shard files are removed. A crash at any point
        leaves a readable store (the old one, or the converted one with stray shard files)."""
        if self.layout == "chunks":
            return self
        os.makedirs(os.path.join(self.path, CHUNK_DIR), exist_ok=True)
        for c in self.done_chunks():
            start, stop = self.chunk_range(c)
            feats, norms = self.read(start, stop)
            fpath, npath = self.chunk_files(c)
            _write_npy(fpath, feats)
            _write_npy(npath, norms)
        self.close()
        manifest = _manifest(self.identity, self.n_rows, self.dim, self.chunk_size, self.manifest["row_ids_sha256"])
        _write_manifest(self.path, manifest)
        for sh in self.manifest["shards"]:
            for key in ("features", "norms"):
                shard_file = os.path.join(self.path, sh[key])
                if os.path.exists(shard_file):
                    os.remove(shard_file)
        return Datastore.open(self.path)

    # -- reading ----------------------------------------------------------------------------------------------------------

    def _files(self, s: int) -> tuple[str, str]:
        if self.layout == "chunks":
            return self.chunk_files(s)
        sh = self._shard(s)
        return os.path.join(self.path, sh["features"]), os.path.join(self.path, sh["norms"])

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
            fpath, npath = self._files(s)
            self._pread_into(fpath, lo * self.dim * 2, feats[k : k + hi - lo])
            self._pread_into(npath, lo * 4, norms[k : k + hi - lo])
            k += hi - lo
        return feats, norms

    def _pread_into(self, path: str, offset: int, out: np.ndarray) -> None:
        """Read `out.nbytes` bytes at data offset `offset` of the .npy file `path` into `out`."""
        view = memoryview(out.reshape(-1).view(np.uint8))
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"datastore {self.path}: {os.path.relpath(path, self.path)} is missing (a chunk that was never "
                "written: is the store complete?)"
            ) from None
        try:
            if path not in self._offsets:
                self._offsets[path] = _npy_data_offset(fd, path)
            base = self._offsets[path] + offset
            got = 0
            while got < len(view):
                n = os.preadv(fd, [view[got:]], base + got)
                if n <= 0:
                    raise OSError(f"short read from {path} at offset {base + got}")
                got += n
        finally:
            os.close(fd)

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
        """Skipped rows recorded in the chunk markers (each marker opened by name, in chunk order: on a shared file
        system a directory listing can lag behind files that another node wrote)."""
        out = []
        for c in range(self.n_chunks):
            try:
                with open(self._marker(c)) as f:
                    out += json.load(f).get("skipped", [])
            except FileNotFoundError:
                continue
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
    appear_timeout: float = 300.0,
) -> Datastore:
    """[`Datastore.open_or_create`] in every process: the main process creates (or checks) the store first —
    converting an unfinished store of the older shard layout to the chunk layout — and the others then open it
    and check its identity (waiting up to `appear_timeout` seconds for it to become visible: on a shared file
    system a directory made on another node can take a moment to appear)."""
    from .. import distributed

    def main() -> Datastore:
        store = Datastore.open_or_create(path, n_rows, dim, identity, row_ids, chunk_size, shard_size)
        if store.layout != "chunks" and not store.complete:
            store = store.convert_to_chunks()
        return store

    st = distributed.state()
    if st.num_processes == 1:
        return main()
    store, error = None, None
    if st.is_main_process:
        try:
            store = main()
        except Exception as err:  # every rank raises it, instead of the others waiting forever
            error = err
    error = distributed.broadcast(error)
    if error is not None:
        raise error
    if store is None:
        manifest = os.path.join(os.fspath(path), MANIFEST)
        distributed.run_agreed(lambda: distributed.wait_for_path(manifest, appear_timeout, what="the datastore"))
        store = Datastore.open(path, expect=identity)
    else:
        distributed.run_agreed(lambda: None)  # the same collectives on every rank
    return store


def fill_store(
    store: Datastore,
    get_rows: Callable[[np.ndarray], tuple[list[Mapping[str, Any]], list[tuple[str, int]]]],
    featurizer: Any,
    on_chunk: Callable[[str, int], None] | None = None,
    desc: str = "features",
    progress: bool = True,
) -> FillReport:
    """Compute this process's unfinished chunks of `store` and mark them done; then agree with the other processes.

    Every process makes the same collectives whatever its share (none, when there are fewer chunks than processes):
    one gather at the end, of the chunks each computed and of any exception, so that an error on one rank (a bad
    row with `on_error="raise"`) is raised on every rank instead of leaving the others waiting. Completeness is
    checked from what the ranks report, not from a directory listing (which can lag on a shared file system).

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
    done_before = store.done_chunks()
    pending = [c for c in range(rank, store.n_chunks, world) if c not in set(done_before)]
    error: BaseException | None = None
    try:
        bar_desc = f"{desc} (rank {rank})" if world > 1 else desc
        for c in tqdm(pending, desc=bar_desc, disable=not progress, unit="chunk"):
            start, stop = store.chunk_range(c)
            ids = store.row_ids[start:stop]
            rows, names = get_rows(ids)
            result = featurizer.featurize_rows(rows, names, ids.tolist())
            unit, norms = normalize(result.features)
            norms = norms.cpu()
            norms[~result.ok] = float("nan")
            store.write_chunk(c, unit.to(torch.float16).cpu().numpy(), norms.numpy())
            if on_chunk is not None:
                on_chunk("written", c)
            skipped = [{**s, "store_row": start + s.pop("position")} for s in (dict(x) for x in result.skipped)]
            store.mark_done(c, {"skipped": skipped})
            report.computed.append(c)
            report.skipped += skipped
            if on_chunk is not None:
                on_chunk("done", c)
        store.close()
    except Exception as err:  # raised on every rank after the gather below
        error = err
    gathered = distributed.gather_agreed((done_before, report.computed), error)
    finished = {c for before, computed in gathered for c in (*before, *computed)}
    missing = [c for c in range(store.n_chunks) if c not in finished]
    if missing:
        raise RuntimeError(f"datastore {store.path}: chunks {missing[:5]} are still unfinished after filling")
    return report
