"""Benchmark: ICONS influence + vote streamed from a datastore vs the naive N × |V| influence matrix.

Not part of CI. Builds (once, untimed) a synthetic datastore of `--rows` unit features of dimension `--dim` in float16
(200,000 × 4096 = 1.6 GB on disk) and `--tasks` validation sets of `--val` rows each, then measures, each in its own
subprocess (so that its peak resident memory is its own), with the store's pages evicted from the page cache first
(`posix_fadvise(DONTNEED)`, i.e. read from disk):

* `streamed` — mixwise: per-task mean validation vectors, the pool streamed block by block with `pread`
  (`stream_scores`), then the vote (and, for the record, every other aggregator);
* `naive`    — the published way: load every pool feature, form the `N × |V|` influence matrix per task, average its
  columns, then the vote.

Both produce the same scores (checked).

usage: python benchmarks/influence.py [--rows 200000] [--dim 4096] [--tasks 10] [--val 50] [--dir /tmp/...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from mixwise.icons.aggregation import AGGREGATORS, aggregate  # noqa: E402
from mixwise.signals.datastore import Datastore  # noqa: E402
from mixwise.signals.influence import combine_influence, stream_scores, task_means  # noqa: E402


def build(a) -> None:
    path = os.path.join(a.dir, "pool")
    identity = {"synthetic": True, "rows": a.rows, "dim": a.dim, "seed": 0}
    store = Datastore.open_or_create(path, a.rows, a.dim, identity, chunk_size=8192)
    rng = np.random.default_rng(0)
    if not store.complete:
        t = time.time()
        for c in store.pending():
            lo, hi = store.chunk_range(c)
            x = np.random.default_rng([0, c]).standard_normal((hi - lo, a.dim), dtype=np.float32)
            norms = np.linalg.norm(x, axis=1)
            store.write(lo, x / norms[:, None], norms)
            store.mark_done(c)
        store.close()
        print(f"built {path}: {a.rows} x {a.dim} float16 in {time.time() - t:.0f}s")
    val = rng.standard_normal((a.tasks, a.val, a.dim), dtype=np.float32)
    val /= np.linalg.norm(val, axis=2, keepdims=True)
    np.save(os.path.join(a.dir, "val.npy"), val.astype(np.float16))


def evict(path: str) -> None:
    """Drop the store's pages from the page cache, so that the timed phase reads from disk."""
    for root, _, names in os.walk(path):
        for name in names:
            if not name.endswith(".npy"):
                continue
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def worker(method: str, a) -> dict:
    path = os.path.join(a.dir, "pool")
    val = np.load(os.path.join(a.dir, "val.npy")).astype(np.float32)
    tasks = [f"task{k}" for k in range(a.tasks)]
    n_select = round(0.2 * a.rows)
    info: dict = {"method": method}
    t = time.perf_counter()
    store = Datastore.open(path)
    if method == "streamed":
        means = np.concatenate([task_means(val[k], name=tasks[k])[1] for k in range(a.tasks)])
        scores = stream_scores(store, means, block_rows=a.block_rows)
        influence = combine_influence([{tk: scores[:, [k]] for k, tk in enumerate(tasks)}])
        info["t_influence"] = time.perf_counter() - t
        sel = aggregate(influence.scores, n_select, "vote", p_vote=0.2)
        info["seconds"] = time.perf_counter() - t
        others = {}
        for m in AGGREGATORS:
            if m in ("vote", "sumnorm"):  # random features: task sums are ~0, sumnorm is rightly refused
                continue
            t2 = time.perf_counter()
            aggregate(influence.scores, n_select, m, task=0)
            others[m] = round(time.perf_counter() - t2, 2)
        info["other_aggregators_s"] = others
        final = influence.scores
    else:
        feats = store.load()[0].astype(np.float32)
        cols = []
        for k in range(a.tasks):
            matrix = feats @ val[k].T  # the N x |V_k| influence matrix
            cols.append(matrix.mean(axis=1))
        final = np.stack(cols, axis=1)
        info["t_influence"] = time.perf_counter() - t
        sel = aggregate(final, n_select, "vote", p_vote=0.2)
        info["seconds"] = time.perf_counter() - t
    np.save(os.path.join(a.dir, f"scores-{method}.npy"), final)
    np.save(os.path.join(a.dir, f"order-{method}.npy"), sel.order)
    info["peak_rss_bytes"] = peak_rss()
    return info


def peak_rss() -> int:
    """This process's peak resident set (VmHWM; unlike `ru_maxrss`, not inherited from the parent across exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--tasks", type=int, default=10)
    p.add_argument("--val", type=int, default=50)
    p.add_argument("--block_rows", type=int, default=16384)
    p.add_argument("--dir", default="/tmp/mixwise-bench-influence")
    p.add_argument("--methods", default="streamed,naive")
    p.add_argument("--worker", default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.worker:
        with open(a.out, "w") as f:
            json.dump(worker(a.worker, a), f)
        return
    os.makedirs(a.dir, exist_ok=True)
    build(a)
    size = a.rows * a.dim * 2 / 1e9
    print(f"datastore: {a.rows:,} x {a.dim} float16 ({size:.2f} GB), {a.tasks} tasks x {a.val} validation rows; "
          f"select 20% by vote (p_vote = 20%)")  # fmt: skip
    results = {}
    for m in a.methods.split(","):
        evict(os.path.join(a.dir, "pool"))
        out = os.path.join(a.dir, f"{m}.json")
        args = [f"--{k}={getattr(a, k)}" for k in ("rows", "dim", "tasks", "val", "block_rows", "dir")]
        subprocess.run([sys.executable, __file__, "--worker", m, "--out", out, *args], check=True)
        with open(out) as f:
            results[m] = json.load(f)
        r = results[m]
        print(f"  {m:<9} influence {r['t_influence']:6.1f}s   influence+vote {r['seconds']:6.1f}s   "
              f"peak RSS {r['peak_rss_bytes'] / 2**30:5.2f} GiB", flush=True)  # fmt: skip
    if "streamed" in results:
        print(f"  other aggregators on the streamed scores (s): {results['streamed']['other_aggregators_s']}")
    if len(results) == 2:
        s, n = results["streamed"], results["naive"]
        a_scores = np.load(os.path.join(a.dir, "scores-streamed.npy"))
        b_scores = np.load(os.path.join(a.dir, "scores-naive.npy"))
        diff = float(np.abs(a_scores - b_scores).max())
        sel_s = set(np.load(os.path.join(a.dir, "order-streamed.npy")).tolist())
        sel_n = set(np.load(os.path.join(a.dir, "order-naive.npy")).tolist())
        agree = len(sel_s & sel_n) / len(sel_s)
        print(
            f"check: max |score difference| {diff:.2e} (float32 summation order); selected sets agree on {agree:.2%}"
        )
        print(f"streamed vs naive: {n['seconds'] / s['seconds']:.2f}x faster, "
              f"{n['peak_rss_bytes'] / s['peak_rss_bytes']:.2f}x less peak RSS")  # fmt: skip


if __name__ == "__main__":
    main()
