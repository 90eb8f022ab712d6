"""Every distributed path of mixwise, run under torchrun with item counts that do not divide the number of
processes (and smaller than it), counting the collective calls each rank makes.

usage: collectives.py MODEL_DIR OUT_DIR

Each case runs with the `torch.distributed` API wrapped (the outermost call of every collective is counted, so a
gather that uses an all-gather inside counts once). Every rank writes OUT_DIR/rank{r}.json: per case, the counts,
what the rank computed, and the result or the exception it raised. Cases: `map_across_ranks` (plain and lockstep,
0 .. 2N+1 items, an exception on one rank), `shared_store` + `fill_store` (fewer chunks than processes, N+1 chunks,
an exception in one rank's chunk), DataProphet's signal computation on the tiny LLaVA (2 and 3 rows in all: fewer
than 3 processes, and not a multiple of 2), a warm-up that fails in the main process's child.
"""

import collections
import json
import math
import os
import sys

import torch
import torch.distributed as dist

from mixwise import distributed
from mixwise.signals.datastore import fill_store, shared_store
from mixwise.signals.gradients import FeatureResult
from mixwise.sources import DataError

COLLECTIVES = [
    "all_gather", "all_gather_object", "all_gather_into_tensor", "all_reduce", "all_to_all", "barrier", "broadcast",
    "broadcast_object_list", "gather", "gather_object", "monitored_barrier", "reduce", "reduce_scatter",
    "reduce_scatter_tensor", "scatter", "scatter_object_list", "send", "recv",
]  # fmt: skip
COUNTS: collections.Counter = collections.Counter()
_DEPTH = [0]


def _counting(name, fn):
    def call(*args, **kwargs):
        if _DEPTH[0] == 0:
            COUNTS[name] += 1
        _DEPTH[0] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _DEPTH[0] -= 1

    return call


def count_collectives():
    """Wrap the `torch.distributed` API of this process so that its collectives are counted in `COUNTS`."""
    for name in COLLECTIVES:
        setattr(dist, name, _counting(name, getattr(dist, name)))


def run_case(record, name, fn):
    COUNTS.clear()
    entry = {}
    try:
        entry["result"] = fn(entry)
    except Exception as err:  # noqa: BLE001 - recorded: the test checks every rank raised the same
        entry["error"] = f"{type(err).__name__}: {err}".split("\n")[0]
    entry["collectives"] = dict(COUNTS)
    record[name] = entry


class FakeFeaturizer:
    """Features from row ids (no model); raises a DataError for row `bad`."""

    feature_dim = 4

    def __init__(self, bad=None):
        self.bad = bad

    def featurize_rows(self, rows, names, row_ids):
        if self.bad in row_ids:
            raise DataError("pool", self.bad, "messages", "a bad row")
        feats = torch.stack([torch.arange(4, dtype=torch.float32) + 1 + i for i in row_ids])
        return FeatureResult(feats, torch.ones(len(row_ids), dtype=torch.bool), [], torch.zeros(len(row_ids)))


DATAPROPHET_CASES = ({"count": 1, "target": 1}, {"count": 1, "ocr": 1, "target": 1})


def dataprophet_data(sizes):
    """A pool and one target of `sizes` rows (DataProphet's smallest inputs: 2 and 3 rows in all)."""
    from mixwise.toy import make_source

    pool = {f: make_source(f, n, seed=1) for f, n in sizes.items() if f != "target"}
    return pool, {"count": make_source("count", sizes["target"], split="validation", seed=2)}


def get_rows(ids):
    return [{"id": int(i)} for i in ids], [("pool", int(i)) for i in ids]


def main():
    model_dir, out_dir = sys.argv[1:3]
    count_collectives()
    distributed.init_state()
    st = distributed.state()
    rank, world = st.process_index, st.num_processes
    record = {"world": world}

    for n in sorted({0, 1, world - 1, world + 1, 2 * world + 1}):
        for lockstep in (False, True):

            def mapped(entry, n=n, lockstep=lockstep):
                seen = []

                def fn(chunk):
                    seen.append(len(chunk))
                    return [x * x for x in chunk]

                out = distributed.map_across_ranks(fn, list(range(n)), lockstep=lockstep)
                entry["calls"] = seen
                entry["expected_width"] = math.ceil(n / world) if n else 0
                return out

            run_case(record, f"map n={n} lockstep={lockstep}", mapped)

    def failing(entry):
        def fn(chunk):
            if rank == world - 1:
                raise DataError("pool", chunk[0] if chunk else None, "answer", f"bad on rank {rank}")
            return chunk

        return distributed.map_across_ranks(fn, list(range(world + 1)))

    run_case(record, "map raises on the last rank", failing)

    for rows, chunk in ((3, 4), ((world + 1) * 2 - 1, 2)):  # 1 chunk (< world); world + 1 chunks, the last short

        def filled(entry, rows=rows, chunk=chunk):
            path = os.path.join(out_dir, f"store-{rows}")
            store = shared_store(path, rows, 4, {"case": rows}, chunk_size=chunk)
            report = fill_store(store, get_rows, FakeFeaturizer(), progress=False)
            entry["computed"] = report.computed
            entry["n_chunks"] = store.n_chunks
            feats, norms = store.load()
            return {"norms": norms.tolist(), "complete": store.complete}

        run_case(record, f"fill rows={rows}", filled)

    def fill_fails(entry):
        store = shared_store(os.path.join(out_dir, "store-bad"), 6, 4, {"case": "bad"}, chunk_size=2)
        bad = 2 * (world - 1)  # the first row of the last rank's first chunk
        return fill_store(store, get_rows, FakeFeaturizer(bad=bad), progress=False).computed

    run_case(record, "fill raises on the last rank", fill_fails)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    for sizes in DATAPROPHET_CASES:

        def dataprophet(entry, sizes=sizes):
            from mixwise.dataprophet import DataProphet

            pool, targets = dataprophet_data(sizes)
            selector = DataProphet(subsample=None, diversity=False, progress=False)
            result = selector.score(pool, targets, model, processor, model_id="tiny-llava")
            entry["items"] = selector.last_work
            return result.metric().to_dict()

        run_case(record, f"dataprophet {sum(sizes.values())} rows", dataprophet)

    def warmup_fails(entry):
        from mixwise import Mixture
        from mixwise.signals.warmup import WarmupConfig, run_warmup
        from mixwise.toy import make_source

        pool = Mixture({"count": make_source("count", 4, seed=1)}, budget=2, validate=False).dataset
        cfg = WarmupConfig.tiny(fraction=0.5, max_length=4)  # 4 tokens would cut the image tokens: a bad row
        return run_warmup(model_dir, None, pool, os.path.join(out_dir, "warmup"), cfg, progress=False).rows

    run_case(record, "warm-up fails in the main process's child", warmup_fails)

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(record, f)
    distributed.shutdown()


if __name__ == "__main__":
    main()
