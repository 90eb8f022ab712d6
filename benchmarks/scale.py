"""Benchmark: end-to-end selection cost as the pool grows from 10k to 1M rows (toy rows, 32-px PNG images).

Not part of CI. For every pool size N (default 10k, 100k, 1M; four toy sources of N/4 rows each, built once and
kept in `--dir`), each stage runs in a fresh subprocess, so that its wall time and its peak resident memory are its
own, next to a baseline of the same size measured in the same run:

| stage | what runs (public API) | baseline of the same N |
|---|---|---|
| `validation` | `mixwise.validate_source` on every source (decodes every image; `cache=False`: the first run's cost) | PIL-decoding every image of the pool |
| `mixture` | `mixwise.Mixture(sources, budget=N/5, validate=False)`, its `dataset` and one epoch's `indices()` | `datasets.concatenate_datasets` of the sources |
| `dataprophet` | `DataProphet().score(pool, 2 targets)` with the tiny LLaVA and the default subsample (512 rows per dataset, as DataProphet scores by default) | — |
| `influence` | ICONS from disk: a datastore of N × `--dim` synthetic unit features (float16, built untimed, evicted from the page cache; every 10th row a near-copy of another), per-task means of 10 validation sets, `stream_scores`, `combine_influence`, the paper's vote (select 20%) | reading every row of the store (`iter_blocks`) |
| `icons_default` | the same with ICONS's default aggregation: duplicate groups of the stored features (`duplicate_groups`, cosine >= 0.999), the vote with duplicates counted once and the coverage floor 0.5 | the same |

Per stage and size it prints seconds, the ratio to the baseline, the peak resident set (VmHWM: heap plus the file
pages the process mapped) and the peak anonymous resident set (heap only, sampled every 20 ms); then the fitted
growth exponent `b` of `seconds ∝ N^b` (least squares in log-log over the sizes) and the change in peak anonymous
memory from the smallest to the largest pool. Goal: `b <= 1.1` for every stage, peak anonymous memory flat.

What this cannot measure on a CPU-only machine: a model forward for every row of a 1M pool (DataProphet's
per-instance scores, ICONS's gradient features) — `--per_row` measures the per-row cost of DataProphet scoring on
`--per_row_rows` rows with every row scored (`subsample=None`) and prints it with the extrapolation to the largest
pool; `benchmarks/featurize.py` measures the featurizer's rows/s.

usage: python benchmarks/scale.py [--sizes 10000,100000,1000000]
                                  [--stages validation,mixture,dataprophet,influence,icons_default]
                                  [--dim 1024] [--dir /tmp/mixwise-bench-scale] [--per_row] [--regenerate]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

FAMILIES = ("count", "colour", "ocr", "chart")
TEMPLATE_ROWS = 2000  # distinct toy rows per source; larger sources repeat them (every row is still decoded)
TASKS, VAL_ROWS = 10, 50


# ---------------------------------------------------------------------------------------------------------------------
# Data (untimed)
# ---------------------------------------------------------------------------------------------------------------------


def pool_dir(a, n: int) -> str:
    return os.path.join(a.dir, f"pool-{n}")


def build_pool(a, n: int) -> None:
    """Four toy sources of n/4 rows each, saved with `save_to_disk` (ids unique; images and Q/A from 2000 distinct
    toy rows per source)."""
    import numpy as np

    from mixwise.toy import make_source

    out = pool_dir(a, n)
    if os.path.exists(os.path.join(out, "done")) and not a.regenerate:
        return
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    per = n // len(FAMILIES)
    for k, family in enumerate(FAMILIES):
        template = make_source(family, min(TEMPLATE_ROWS, per), seed=k)
        ds = template.select(np.arange(per) % len(template))
        ds = ds.remove_columns("id").add_column("id", [f"{family}/{i}" for i in range(per)])
        ds.save_to_disk(os.path.join(out, family))
    with open(os.path.join(out, "done"), "w") as f:
        f.write("ok")
    print(f"  built the {n:,}-row pool in {time.perf_counter() - t:.0f}s", flush=True)


COPY_EVERY = 10  # every 10th row of the synthetic store is a near-copy of the row 5 before it


def store_dir(a, n: int) -> str:
    return os.path.join(a.dir, f"store-{n}-{a.dim}-copies{COPY_EVERY}")


def build_store(a, n: int) -> None:
    import numpy as np

    from mixwise.signals.datastore import Datastore

    identity = {"synthetic": n, "dim": a.dim, "copy_every": COPY_EVERY}
    store = Datastore.open_or_create(store_dir(a, n), n, a.dim, identity, chunk_size=8192)
    if store.complete:
        return
    t = time.perf_counter()
    for c in store.pending():
        lo, hi = store.chunk_range(c)
        rng = np.random.default_rng([0, c])
        x = rng.standard_normal((hi - lo, a.dim), dtype=np.float32)
        # near-copies (cosine ~ 0.99999, like one row featurized in two batches) of the row 5 before, in the chunk
        copies = np.arange(COPY_EVERY - 1, hi - lo, COPY_EVERY)
        x[copies] = x[copies - 5] + 1e-4 * rng.standard_normal((len(copies), a.dim), dtype=np.float32)
        norms = np.linalg.norm(x, axis=1)
        store.write_chunk(c, x / norms[:, None], norms)
        store.mark_done(c)
    val = np.random.default_rng(1).standard_normal((TASKS, VAL_ROWS, a.dim), dtype=np.float32)
    val /= np.linalg.norm(val, axis=2, keepdims=True)
    np.save(os.path.join(a.dir, f"val-{a.dim}.npy"), val.astype(np.float16))
    print(f"  built the {n:,} x {a.dim} store in {time.perf_counter() - t:.0f}s", flush=True)


def evict(path: str) -> None:
    """Drop a directory's file pages from the page cache, so that the timed phase reads from disk."""
    for root, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


# ---------------------------------------------------------------------------------------------------------------------
# Workers (one per stage and size, in a subprocess)
# ---------------------------------------------------------------------------------------------------------------------


class AnonPeak:
    """The peak anonymous resident set (RssAnon) of this process, sampled every 20 ms in a thread."""

    def __init__(self):
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, self.now())


def vm_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def load_sources(a, n: int):
    import datasets

    from mixwise import Source

    return [Source(f, datasets.load_from_disk(os.path.join(pool_dir(a, n), f))) for f in FAMILIES]


def targets():
    from mixwise.toy import make_source

    return {f: make_source(f, 32, split="validation", seed=9) for f in ("count", "ocr")}


def work(stage: str, a, n: int) -> dict:
    import numpy as np

    import mixwise

    info: dict = {}
    if stage in ("validation", "validation-baseline", "mixture", "mixture-baseline"):
        sources = load_sources(a, n)
    if stage in ("influence", "icons_default"):
        from mixwise.icons.aggregation import aggregate
        from mixwise.signals.datastore import Datastore
        from mixwise.signals.influence import combine_influence, stream_scores, task_means

        if stage == "icons_default":
            from mixwise.signals.duplicates import duplicate_groups  # (imports torch, through l2_normalize)

        val = np.load(os.path.join(a.dir, f"val-{a.dim}.npy")).astype(np.float32)
    if stage == "dataprophet":
        from mixwise.dataprophet import DataProphet
        from mixwise.testing import build_tiny_llava

        sources = load_sources(a, n)
        model, processor = build_tiny_llava(seed=0)
        tgt = targets()
    anon = AnonPeak()  # imports and inputs are loaded: from here on, what the stage itself costs
    start_anon = anon.now()
    t = time.perf_counter()
    if stage == "validation":
        for s in sources:
            mixwise.validate_source(s, cache=False)  # the first run's cost (a second run reads the cached result)
    elif stage == "validation-baseline":
        from PIL import Image

        for s in sources:
            col = s.dataset.select_columns(["images"]).with_format("arrow")
            for lo in range(0, len(s.dataset), 4096):
                for images in col[lo : lo + 4096].column("images").to_pylist():
                    for im in images:
                        Image.open(io.BytesIO(im["bytes"])).load()
    elif stage == "mixture":
        mixture = mixwise.Mixture(sources, budget=n // 5, validate=False)
        info["rows"] = len(mixture.dataset)
        info["drawn"] = len(mixture.indices())
    elif stage == "mixture-baseline":
        import datasets

        info["rows"] = len(datasets.concatenate_datasets([s.dataset for s in sources]))
    elif stage == "dataprophet":
        selector = DataProphet(progress=False, **a.dataprophet_kwargs)
        selector.score(sources, tgt, model, processor)
        info["scored_rows"] = selector.last_work["items_total"]  # (dataset, row) items run through the model
    elif stage in ("influence", "icons_default"):
        store = Datastore.open(store_dir(a, n))
        groups = duplicate_groups(store, 0.999) if stage == "icons_default" else None
        tasks = [f"task{k}" for k in range(TASKS)]
        means = np.concatenate([task_means(val[k], name=tasks[k])[1] for k in range(TASKS)])
        scores = stream_scores(store, means)
        influence = combine_influence([{tk: scores[:, k : k + 1] for k, tk in enumerate(tasks)}])
        if groups is None:  # the paper's vote
            selection = aggregate(influence.scores, n // 5, "vote", p_vote=0.2)
        else:  # duplicates counted once (in the vote share too) and the coverage floor
            distinct = int(groups.max()) + 1
            selection = aggregate(influence.scores, n // 5, "vote", p_vote=min(1.0, (n // 5) / distinct),
                                  groups=groups, coverage_floor=0.5)  # fmt: skip
            info["distinct"] = distinct
            chunk_rows = [hi - lo for lo, hi in map(store.chunk_range, range(store.n_chunks))]
            info["planted_distinct"] = n - sum(rows // COPY_EVERY for rows in chunk_rows)  # a copy per 10 rows
            info["repeated_in_selection"] = len(selection.order) - len(set(groups[selection.order].tolist()))
        info["selected"] = len(selection.order)
    elif stage == "influence-baseline":
        from mixwise.signals.datastore import Datastore

        total = 0.0
        for _, _, feats, _ in Datastore.open(store_dir(a, n)).iter_blocks(16384):
            total += float(feats[0, 0])
    info["seconds"] = time.perf_counter() - t
    info["peak_anon_bytes"] = anon.stop() - start_anon
    info["peak_rss_bytes"] = vm_hwm()
    return info


def run_worker(stage: str, a, n: int) -> dict:
    out = os.path.join(a.dir, f"result-{stage}-{n}.json")
    if stage.startswith("influence") or stage == "icons_default":
        evict(store_dir(a, n))
    args = [f"--dir={a.dir}", f"--dim={a.dim}", f"--dataprophet_kwargs={json.dumps(a.dataprophet_kwargs)}"]
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    subprocess.run([sys.executable, __file__, "--worker", stage, "--n", str(n), "--out", out, *args], check=True,
                   env=env)  # fmt: skip
    with open(out) as f:
        return json.load(f)


# ---------------------------------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------------------------------

BASELINES = {
    "validation": "validation-baseline",
    "mixture": "mixture-baseline",
    "influence": "influence-baseline",
    "icons_default": "influence-baseline",
}


def exponent(sizes, values) -> float:
    import numpy as np

    return float(np.polyfit(np.log(sizes), np.log(values), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--stages", default="validation,mixture,dataprophet,influence,icons_default")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--dir", default="/tmp/mixwise-bench-scale")
    p.add_argument("--regenerate", action="store_true", help="rebuild the pools (e.g. to defeat a validation cache)")
    p.add_argument("--per_row", action="store_true", help="also measure DataProphet's per-row cost, every row scored")
    p.add_argument("--per_row_rows", type=int, default=1024)
    p.add_argument("--dataprophet_kwargs", default="{}", help=argparse.SUPPRESS)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    a.dataprophet_kwargs = json.loads(a.dataprophet_kwargs)
    if a.worker:
        with open(a.out, "w") as f:
            json.dump(work(a.worker, a, a.n), f)
        return
    sizes = [int(s) for s in a.sizes.split(",")]
    stages = a.stages.split(",")
    os.makedirs(a.dir, exist_ok=True)
    print(f"pools of {', '.join(f'{n:,}' for n in sizes)} rows (4 toy sources, 32-px PNG); store dim {a.dim}; "
          f"{os.cpu_count()} CPU cores", flush=True)  # fmt: skip
    for n in sizes:
        if any(s in stages for s in ("validation", "mixture", "dataprophet")):
            build_pool(a, n)
        if "influence" in stages or "icons_default" in stages:
            build_store(a, n)
    results: dict[str, dict[int, dict]] = {}
    for stage in stages:
        for n in sizes:
            for name in (stage, BASELINES.get(stage)):
                if name is not None and n not in results.get(name, {}):  # a baseline shared by two stages runs once
                    results.setdefault(name, {})[n] = run_worker(name, a, n)
            r = results[stage][n]
            base = results.get(BASELINES.get(stage, ""), {}).get(n)
            ratio = f"{r['seconds'] / base['seconds']:6.2f}x baseline" if base else " " * 15
            print(f"  {stage:<13} N={n:>9,}  {r['seconds']:8.2f}s  {ratio}  peak RSS {r['peak_rss_bytes'] / 2**20:7.0f} MiB"
                  f"  peak anon +{r['peak_anon_bytes'] / 2**20:6.0f} MiB", flush=True)  # fmt: skip
            if "distinct" in r:
                print(f"  {'':<13} {r['distinct']:,} duplicate groups (planted: {r['planted_distinct']:,} distinct rows), "
                      f"{r['repeated_in_selection']} rows selected twice", flush=True)  # fmt: skip
    print("growth with the pool (seconds ~ N^b; peak anonymous memory, smallest -> largest pool):")
    for stage in stages:
        secs = [results[stage][n]["seconds"] for n in sizes]
        anon = [results[stage][n]["peak_anon_bytes"] / 2**20 for n in sizes]
        line = f"  {stage:<13} b = {exponent(sizes, secs):5.2f}"
        base = BASELINES.get(stage)
        if base:
            line += f"  (baseline b = {exponent(sizes, [results[base][n]['seconds'] for n in sizes]):5.2f})"
        line += f"   peak anon {anon[0]:6.0f} -> {anon[-1]:6.0f} MiB"
        print(line)
    if a.per_row:
        n = a.per_row_rows
        build_pool(a, n)
        a.dataprophet_kwargs = {"subsample": None, "diversity": False}
        r = run_worker("dataprophet", a, n)
        per = r["seconds"] / r["scored_rows"]
        print(f"DataProphet scoring every row (subsample=None) of a {n:,}-row pool: {r['scored_rows']:,} rows in "
              f"{r['seconds']:.1f}s = {per * 1e3:.2f} ms/row; a {sizes[-1]:,}-row pool would take "
              f"{per * sizes[-1] / 3600:.1f} h here")  # fmt: skip


if __name__ == "__main__":
    main()
