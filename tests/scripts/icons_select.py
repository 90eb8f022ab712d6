"""Run the ICONS selector on a fixed toy pool with a finished warm-up, under torchrun (any number of processes).

usage: icons_select.py MODEL_DIR WARMUP_DIR WORK_DIR OUT_DIR

Every rank fills its own chunks of the shared datastores in WORK_DIR; rank 0 writes OUT_DIR/selection.json and
OUT_DIR/result.json (selected rows, votes, scores) and every rank writes OUT_DIR/rank{r}.json with its plan counts.
"""

import json
import os
import sys

from mixwise import Mixture, select_mixture
from mixwise.distributed import shutdown, state
from mixwise.icons import ICONS
from mixwise.toy import make_source

POOL = {"count": 8, "colour": 6, "ocr": 8}
TARGETS = {"count": 3, "ocr": 3}


def main():
    model_dir, warmup_dir, work_dir, out_dir = sys.argv[1:5]
    pool = {f: make_source(f, n, seed=1) for f, n in POOL.items()}
    targets = {f: make_source(f, n, split="validation", seed=2) for f, n in TARGETS.items()}
    selector = ICONS(
        model_path=model_dir,
        warmup_dir=warmup_dir,
        work_dir=work_dir,
        proj_dim=48,
        chunk_size=4,
        batch_size=4,
        progress=False,
        device="cpu",
    )
    _, plan = select_mixture(pool, selector, budget=6, seed=0, targets=targets, model_id="tiny-llava")
    st = state()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f"rank{st.process_index}.json"), "w") as f:
        json.dump({"world": st.num_processes, "rows": {n: s.rows for n, s in plan.sources.items()}}, f)
    if st.is_main_process:
        plan.save(out_dir)
        r = selector.result
        with open(os.path.join(out_dir, "result.json"), "w") as f:
            json.dump({"order": r.selection.order.tolist(), "votes": r.votes.tolist(),
                       "scores": r.influence.scores.tolist()}, f)  # fmt: skip
    assert len(Mixture(pool, budget=6).dataset) == sum(POOL.values())
    shutdown()


if __name__ == "__main__":
    main()
