"""DataProphet's per-dataset signals: computed across ranks in one pass per row, cached per dataset and signal.

For every dataset (source or target) DataProphet needs, on a seeded subsample of its rows: the per-sample answer
NLL (perplexity), the Q and A text embeddings and the image embedding (field similarity, diversity). A
[`SignalComputer`] reads each row once — one forward gives the answer NLL and, from the same image pathway, the
image vector ([`mixwise.signals.perplexity.forward_nll`]); one length-sorted text pass embeds Q and A — splits the
rows across processes ([`mixwise.distributed.map_across_ranks`]) and caches every (dataset, signal) under a
deterministic key (signal settings + subsample rows + model id + dataset fingerprint + library version), in memory
and, with `cache_dir`, on disk, so that adding a target computes only that target's signals.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from .. import distributed
from ..files import atomic_savez, atomic_write_json
from ..fingerprint import short_hash, stable_seed, transform_fingerprint
from ..models import eval_mode
from ..signals.diversity import sample_vectors
from ..signals.embeddings import FieldEmbedder, mean_unit_vector
from ..signals.encoding import encode_rows
from ..signals.perplexity import dataset_perplexity, forward_nll
from ..sources import DataError, as_pil, extract_fields, row_images
from .config import DataProphetConfig, Terms

logger = logging.getLogger(__name__)

__all__ = ["DatasetSignals", "SignalComputer", "SignalJob", "dataset_has_images", "is_failure"]


@dataclass
class DatasetSignals:
    """Per-sample signals of one dataset (its subsample): NLL, Q/A/I embeddings, and the rows that failed.

    `rows[kind]` holds the dataset row ids each array's rows belong to. A row that fails for one signal (e.g. a
    row over `max_length` has embeddings but no NLL) is left out of all of them ([`drop_failed`]).
    """

    name: str
    role: str
    fingerprint: str
    size: int
    rows: dict[str, np.ndarray] = field(default_factory=dict)
    nll: np.ndarray | None = None
    q: np.ndarray | None = None
    a: np.ndarray | None = None
    i: np.ndarray | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)  # {"row", "field", "problem", "kind"}

    def drop_failed(self) -> None:
        """Leave rows that failed for any signal out of every signal, so that all terms use the same rows."""
        bad = np.array(sorted({int(f["row"]) for f in self.failures if f["row"] is not None}), dtype=np.int64)
        if bad.size == 0:
            return
        for kind, keys in (("nll", ("nll",)), ("text", ("q", "a")), ("image", ("i",))):
            if kind in self.rows:
                keep = ~np.isin(self.rows[kind], bad)
                self.rows[kind] = self.rows[kind][keep]
                for key in keys:
                    setattr(self, key, getattr(self, key)[keep])

    @property
    def ppl(self) -> float:
        if self.nll is None:
            raise ValueError(f"{self.role} '{self.name}': perplexity was not computed")
        return dataset_perplexity(self.nll)

    def mean(self, key: str) -> np.ndarray | None:
        x = getattr(self, key)
        return None if x is None else mean_unit_vector(x)

    def z(self) -> np.ndarray:
        """Per-sample vectors for diversity: normalized mean of the sample's Q, A (and I) unit vectors."""
        if self.q is None or self.a is None:
            raise ValueError(f"{self.role} '{self.name}': diversity needs the text embeddings")
        if self.i is None:
            return sample_vectors([self.q, self.a])
        common, qi, ii = np.intersect1d(self.rows["text"], self.rows["image"], return_indices=True)
        return sample_vectors([self.q[qi], self.a[qi], self.i[ii]])


def _failure(err: DataError, kind: str) -> dict[str, Any]:
    return {"row": err.row, "field": err.field, "problem": err.problem, "kind": kind}


def dataset_has_images(ds: datasets.Dataset) -> bool:
    cols = [c for c in ("images", "image") if c in ds.column_names]
    if not cols or len(ds) == 0:
        return False
    first = ds.select_columns(cols).with_format("arrow")[0:1].to_pylist()[0]
    return bool(row_images(first))


class SignalJob:
    """One (dataset, kind) signal to compute: what the workers need (never pickled: it stays in each process)."""

    def __init__(self, role: str, name: str, dataset: datasets.Dataset, kind: str, rows: np.ndarray):
        self.role, self.name, self.dataset, self.kind, self.rows = role, name, dataset, kind, rows


def stack_vectors(vectors: list[np.ndarray]) -> np.ndarray:
    if not vectors:
        return np.zeros((0, 0), dtype=np.float32)
    return np.stack(vectors).astype(np.float32)


def is_failure(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


class SignalComputer:
    """Computes, caches and reads back the signals of [`SignalJob`]s (see the module docstring).

    Attributes:
        settings: the [`~mixwise.dataprophet.DataProphetConfig`] (signal settings, subsample, cache directory).
        memory: `{key: (meta, arrays)}`, every signal read or computed by this object (share it between computers
            to reuse signals across configurations: keys name the signal settings).
        last_work: `{"items_total", "items_local"}` of the last computation: how many (dataset, signal, row) items
            were computed in all and by this process.
    """

    def __init__(self, settings: DataProphetConfig):
        self.settings = settings
        self.memory: dict[str, tuple[dict[str, Any], dict[str, np.ndarray]]] = {}
        self.last_work: dict[str, int] = {}

    def signals(
        self,
        specs: list[tuple[str, str, datasets.Dataset, int | None]],
        terms: Terms,
        model: Any,
        processing_class: Any,
        model_id: str | None,
    ) -> tuple[dict[tuple[str, str], DatasetSignals], list, list]:
        """Signals of `(role, name, dataset, subsample)` datasets: from the cache, or computed across ranks."""
        need_text = terms.qsim or terms.asim
        jobs: list[SignalJob] = []
        for role, name, ds, subsample in specs:
            rows = self._subsample(name, ds, role, subsample)
            images = dataset_has_images(ds)
            if terms.isim and not images:
                raise DataError(name, None, "images", f"{role} has no images; switch the image term off (isim)")
            diverse = role == "source" and terms.diversity
            if terms.ppl:
                jobs.append(SignalJob(role, name, ds, "nll", rows))
            if need_text or diverse:
                jobs.append(SignalJob(role, name, ds, "text", rows))
            if images and (terms.isim or diverse):
                jobs.append(SignalJob(role, name, ds, "image", rows))
        model_key = model_id or f"unidentified-model-{id(model)}"
        keys = [self._key(job, model_key) for job in jobs]
        # The main process decides what is missing, so that every rank runs the same work list.
        missing = distributed.broadcast([k for k, key in enumerate(keys) if self._load(key, model_id) is None])
        for k, entry in zip(missing, self._compute([jobs[k] for k in missing], model, processing_class)):
            self._store(keys[k], entry, jobs[k], model_id)
        signals: dict[tuple[str, str], DatasetSignals] = {}
        for job, key in zip(jobs, keys):
            meta, arrays = self._load(key, model_id)
            sig = signals.setdefault(
                (job.role, job.name), DatasetSignals(job.name, job.role, job.dataset._fingerprint, len(job.dataset))
            )
            sig.rows[job.kind] = arrays["rows"]
            sig.failures += meta["failures"]
            if job.kind == "nll":
                sig.nll = arrays["nll"]
            elif job.kind == "text":
                sig.q, sig.a = arrays["q"], arrays["a"]
            else:
                sig.i = arrays["i"]
        for sig in signals.values():
            self._check_failures(sig)
            sig.drop_failed()
        computed = [(jobs[k].role, jobs[k].name, jobs[k].kind) for k in missing]
        cached = [(job.role, job.name, job.kind) for k, job in enumerate(jobs) if k not in set(missing)]
        return signals, computed, cached

    def _check_failures(self, sig: DatasetSignals) -> None:
        if sig.failures and self.settings.on_error == "raise":
            f = sig.failures[0]
            raise DataError(sig.name, f["row"], f["field"], f["problem"])
        for kind, rows in sig.rows.items():
            if len(rows) == 0:
                raise DataError(sig.name, None, "rows", f"no usable rows left for the {kind} signal ({sig.role})")

    def _subsample(self, name: str, ds: datasets.Dataset, role: str, subsample: int | None) -> np.ndarray:
        n = len(ds)
        if n == 0:
            raise DataError(name, None, "rows", f"the {role} dataset is empty")
        k = n if subsample is None else min(subsample, n)
        if k == n:
            return np.arange(n, dtype=np.int64)
        rng = np.random.default_rng(stable_seed(self.settings.seed, "dataprophet-subsample", name, n))
        return np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)

    def _signal_config(self, kind: str) -> dict[str, Any]:
        cfg = self.settings
        if kind == "nll":
            return cfg.perplexity.key()
        emb = cfg.embedding.key()
        if kind == "text":
            return {k: emb[k] for k in ("text_encoder", "text_layer", "text_pooling", "max_text_tokens")}
        return {k: emb[k] for k in ("image_feature", "image_layer", "image_pooling")}

    def _key(self, job: SignalJob, model_key: str) -> str:
        return transform_fingerprint(
            f"dataprophet/{job.kind}",
            {
                "signal": self._signal_config(job.kind),
                "rows": short_hash(np.asarray(job.rows, np.int64), 16),
                "n": len(job.rows),
            },
            model_key,
            job.dataset._fingerprint,
        )

    # -- cache ------------------------------------------------------------------------------------------------------

    def _paths(self, key: str) -> tuple[str, str]:
        base = os.path.join(self.settings.cache_dir, key)
        return base + ".npz", base + ".json"

    def _load(self, key: str, model_id: str | None) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        if key in self.memory:
            return self.memory[key]
        if self.settings.cache_dir is None or model_id is None:
            return None
        npz, meta_path = self._paths(key)
        if not (os.path.exists(meta_path) and os.path.exists(npz)):
            return None
        with open(meta_path) as f:
            meta = json.load(f)
        with np.load(npz) as data:
            arrays = {k: data[k] for k in data.files}
        self.memory[key] = (meta, arrays)
        return meta, arrays

    def _store(self, key: str, entry: tuple[dict[str, Any], dict[str, np.ndarray]], job: SignalJob, model_id) -> None:
        meta = {**entry[0], "dataset": job.name, "role": job.role, "fingerprint": job.dataset._fingerprint}
        meta.update({"kind": job.kind, "model_id": model_id, "config": self._signal_config(job.kind)})
        self.memory[key] = (meta, entry[1])
        if self.settings.cache_dir is None or not distributed.is_main_process():
            return
        if model_id is None:
            logger.warning("DataProphet: no model id given, so signals are cached in memory only, not on disk")
            return
        os.makedirs(self.settings.cache_dir, exist_ok=True)
        npz, meta_path = self._paths(key)
        atomic_savez(npz, **entry[1])
        atomic_write_json(meta_path, meta, indent=1)  # the .json appears last: its presence marks a complete entry

    # -- computation ------------------------------------------------------------------------------------------------

    def _compute(
        self, jobs: list[SignalJob], model: Any, processing_class: Any
    ) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
        """Compute the jobs' signals, split across ranks by row; every rank gets all results.

        The jobs of one dataset are computed together (they share its subsample rows): each row is read and decoded
        once, one forward pass gives its answer NLL and, from the same image pathway, its image vector, and one
        text pass embeds its question and answer.
        """
        if not jobs:
            self.last_work = {"items_total": 0, "items_local": 0}
            return []
        if model is None:
            raise ValueError("DataProphet needs a model to compute signals")
        units: dict[tuple[str, str], list[int]] = {}
        for j, job in enumerate(jobs):
            units.setdefault((job.role, job.name), []).append(j)
        members = list(units.values())
        for group in members:
            if any(not np.array_equal(jobs[j].rows, jobs[group[0]].rows) for j in group):
                raise RuntimeError("signals of one dataset were asked for on different rows")
        items = [(u, int(r)) for u, group in enumerate(members) for r in jobs[group[0]].rows]
        local: dict[str, int] = {}

        def work(chunk):
            local["items_local"] = len(chunk)
            return self._work(jobs, members, chunk, model, processing_class)

        with eval_mode(model):
            results = distributed.map_across_ranks(work, items)
        self.last_work = {"items_total": len(items), "items_local": local.get("items_local", 0)}
        by_job: dict[int, list[Any]] = {}
        k = 0
        for group in members:
            n = len(jobs[group[0]].rows)
            for j in group:
                by_job[j] = [r[jobs[j].kind] for r in results[k : k + n]]
            k += n
        out = []
        for j, job in enumerate(jobs):
            res = by_job[j]
            ok = [(int(r), v) for r, v in zip(job.rows, res) if not is_failure(v)]
            failures = [v["error"] for v in res if is_failure(v)]
            arrays: dict[str, np.ndarray] = {"rows": np.array([r for r, _ in ok], dtype=np.int64)}
            if job.kind == "nll":
                arrays["nll"] = np.array([v for _, v in ok], dtype=np.float64)
            elif job.kind == "text":
                arrays["q"] = stack_vectors([v[0] for _, v in ok])
                arrays["a"] = stack_vectors([v[1] for _, v in ok])
            else:
                arrays["i"] = stack_vectors([v for _, v in ok])
            out.append(({"failures": failures}, arrays))
        return out

    def _work(
        self,
        jobs: list[SignalJob],
        members: list[list[int]],
        chunk: list[tuple[int, int]],
        model: Any,
        processing_class: Any,
    ) -> list[dict[str, Any]]:
        """This rank's share: consecutive rows of the same dataset are read and computed in batches; one
        `{kind: value or failure}` per row."""
        from tqdm.auto import tqdm

        cfg = self.settings
        embedder = FieldEmbedder(model, processing_class, cfg.embedding)
        out: list[dict[str, Any]] = []
        show = cfg.progress and distributed.is_main_process()
        bar = tqdm(total=len(chunk), desc="DataProphet signals", disable=not show)
        read = max(cfg.perplexity.batch_size, cfg.embedding.batch_size) * 4
        for u, group in itertools.groupby(chunk, key=lambda item: item[0]):
            first = jobs[members[u][0]]
            kinds = [jobs[j].kind for j in members[u]]
            row_ids = [r for _, r in group]
            for start in range(0, len(row_ids), read):
                ids = row_ids[start : start + read]
                bar.set_postfix_str(f"{first.role} {first.name}: {'+'.join(kinds)}")
                out += self.compute_rows(first, kinds, ids, model, processing_class, embedder)
                bar.update(len(ids))
        bar.close()
        return out

    def compute_rows(
        self, job: SignalJob, kinds: list[str], ids: list[int], model, processing_class, embedder: FieldEmbedder
    ) -> list[dict[str, Any]]:
        raw = job.dataset.with_format("arrow")[ids].to_pylist()
        results: list[dict[str, Any]] = [{} for _ in ids]
        text_k, text_f = [], []  # rows whose Q/A are embedded
        fwd_k, fwd_rows = [], []  # rows that go through the model with their images (NLL and/or image vector)
        for k, (r, row) in enumerate(zip(ids, raw)):
            try:
                f = extract_fields(row, job.name, r)
            except DataError as err:
                for kind in kinds:
                    results[k][kind] = {"error": _failure(err, kind)}
                continue
            if "text" in kinds:
                text_k.append(k)
                text_f.append(f)
            if "nll" not in kinds and "image" not in kinds:
                continue
            try:
                decoded = []
                for im in row_images(row):
                    try:
                        decoded.append(as_pil(im))
                    except Exception as err:  # PIL raises several types for corrupt data
                        raise DataError(
                            job.name, r, "images", f"image fails to decode ({type(err).__name__}: {err})"
                        ) from None
            except DataError as err:
                for kind in ("nll", "image"):
                    if kind in kinds:
                        results[k][kind] = {"error": _failure(err, kind)}
                continue
            if "image" in kinds and not decoded:
                results[k]["image"] = {
                    "error": _failure(DataError(job.name, r, "images", "row has no image"), "image")
                }
                if "nll" not in kinds:
                    continue
            row = {**row, "images": decoded}
            row.pop("image", None)
            fwd_k.append(k)
            fwd_rows.append(row)
        if text_k:
            n = len(text_f)
            vectors = embedder.embed_texts([f.question for f in text_f] + [f.answer for f in text_f])
            for k, q, a in zip(text_k, vectors[:n], vectors[n:]):
                results[k]["text"] = (q, a)
        if fwd_k:
            fwd_ids = [ids[k] for k in fwd_k]
            want_image = "image" in kinds
            if "nll" in kinds:
                values = self._forward(job.name, fwd_rows, fwd_ids, want_image, model, processing_class, embedder)
            else:
                values = [(None, v) for v in embedder.embed_images([row["images"] for row in fwd_rows])]
            for k, (nll, image) in zip(fwd_k, values):
                if nll is not None:
                    results[k]["nll"] = nll
                if want_image and "image" not in results[k]:
                    results[k]["image"] = image
        return results

    def _forward(
        self, name: str, rows: list[dict], ids: list[int], want_image: bool, model, processing_class, embedder
    ) -> list[tuple[Any, Any]]:
        """`(nll, image vector)` per row (a failure dict in place of a value that could not be computed): one
        forward per batch gives both ([`mixwise.signals.perplexity.forward_nll`])."""
        cfg = self.settings.perplexity
        out: list[tuple[Any, Any]] = []
        for start in range(0, len(rows), cfg.batch_size):
            chunk, chunk_ids = rows[start : start + cfg.batch_size], ids[start : start + cfg.batch_size]
            try:
                out += self._forward_batch(name, chunk, want_image, model, processing_class, embedder)
                continue
            except DataError:
                pass
            for row, r in zip(chunk, chunk_ids):  # a bad row in the batch: find it (and any others) one at a time
                try:
                    out += self._forward_batch(name, [row], want_image, model, processing_class, embedder)
                except DataError as err:
                    err = DataError(name, r, err.field, err.problem)
                    image = None
                    if want_image and row["images"]:  # the row's image signal does not depend on its text
                        image = embedder.embed_images([row["images"]])[0]
                    out.append(({"error": _failure(err, "nll")}, image))
        return out

    def _forward_batch(self, name, rows, want_image, model, processing_class, embedder) -> list[tuple[Any, Any]]:
        cfg = self.settings.perplexity
        batch = encode_rows(rows, processing_class, max_length=cfg.max_length, source=name)
        nll, image_out = forward_nll(model, batch, image_features=want_image)
        images: list[Any] = [None] * len(rows)
        counts = [len(row["images"]) for row in rows]
        if want_image and all(counts):  # (a batch mixing rows with and without images fails in encode_rows)
            if image_out is not None:
                per_image = embedder.image_vectors(image_out, sum(counts), batch.get("image_grid_thw"))
                images = embedder.sample_vectors(per_image, counts)
            else:  # the model cannot take precomputed image features: a separate image pass
                images = list(embedder.embed_images([row["images"] for row in rows]))
        return [(float(x), v) for x, v in zip(nll.tolist(), images)]
