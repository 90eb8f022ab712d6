"""Fill the gradient datastore of `icons_featurize.py` (tiny LLaVA + LoRA, a 12-row toy pool, chunks of 2 rows)
from every process of a torchrun launch — one node or several — and record which chunks this process wrote.

usage: store_fill.py STORE_DIR OUT_DIR

Every process writes OUT_DIR/rank{r}.json: `{"world", "node", "computed"}` (the chunk ids it computed and wrote).
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from icons_featurize import build, get_rows_for  # noqa: E402

from mixwise.distributed import init_state, shutdown, state  # noqa: E402
from mixwise.signals.datastore import fill_store, shared_store  # noqa: E402

CHUNK = 2


def main():
    store_dir, out_dir = sys.argv[1:3]
    init_state()
    featurizer, ds = build()
    identity = {"model": "tiny-llava", "features": featurizer.identity(), "dataset": ds._fingerprint}
    store = shared_store(store_dir, len(ds), featurizer.feature_dim, identity, chunk_size=CHUNK)
    report = fill_store(store, get_rows_for(ds), featurizer, progress=False)
    os.makedirs(out_dir, exist_ok=True)
    record = {"world": state().num_processes, "node": os.environ.get("GROUP_RANK"), "computed": report.computed}
    with open(os.path.join(out_dir, f"rank{state().process_index}.json"), "w") as f:
        json.dump(record, f)
    shutdown()


if __name__ == "__main__":
    main()
