"""ICONS with a warm-up, from the selection callback of a real SFTTrainer (or from the `mixwise select` CLI), under
torchrun with any number of processes; records what every rank selected and consumed.

usage: icons_warmup_train.py callback MODEL_DIR OUT_DIR [--method icons|cadc]
       icons_warmup_train.py cli MODEL_DIR OUT_DIR DATA_DIR

`callback`: SFTTrainer on a fixed toy pool; `attach` installs the selector, which trains its LoRA warm-up on the
live model (`run_warmup=True`, the tiny preset), fills its datastores in OUT_DIR/work and selects; then one epoch of
the plan is trained. Every rank writes OUT_DIR/rank{r}.json: the plan's rows, the ids its collator received, and the
number of optimizer steps. `cli`: `mixwise select --method icons` on DATA_DIR's pool and targets (saved by the
test), work dir OUT_DIR/work.
"""

import argparse
import json
import os

from mixwise import Mixture, attach
from mixwise.distributed import shutdown, state
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source

POOL = {"count": 8, "colour": 6, "ocr": 7}
TARGETS = {"count": 3, "ocr": 3}
BUDGET = 7  # not a multiple of (per-device batch 2) x processes for 2 and 3 processes
SETTINGS = dict(run_warmup=True, warmup_preset="tiny", proj_dim=32, chunk_size=4, batch_size=4, progress=False)


def pool():
    return {f: make_source(f, n, seed=1) for f, n in POOL.items()}


def targets():
    return {f: make_source(f, n, split="validation", seed=2) for f, n in TARGETS.items()}


def callback(a):
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    if a.method == "icons":
        from mixwise.icons import ICONS as Selector
    else:
        from mixwise.cadc import CADC as Selector

    mixture = Mixture(pool(), budget=BUDGET, seed=5)
    model = AutoModelForImageTextToText.from_pretrained(a.model_dir)
    processor = AutoProcessor.from_pretrained(a.model_dir)
    args = SFTConfig(**cpu_trainer_kwargs(os.path.join(a.out_dir, "run"), num_train_epochs=1, seed=5, max_length=None))
    trainer = SFTTrainer(model=model, args=args, train_dataset=mixture.dataset, processing_class=processor)
    consumed = []
    collator = trainer.data_collator

    def recording(examples):
        consumed.extend(ex["id"] for ex in examples)
        return collator(examples)

    trainer.data_collator = recording
    selector = Selector(work_dir=os.path.join(a.out_dir, "work"), plots=False, **SETTINGS)
    attach(trainer, mixture, selector=selector, targets=targets(), model_id="tiny-llava")
    trainer.train()
    plan = mixture.plan
    record = {
        "world": state().num_processes,
        "rows": {n: s.rows for n, s in plan.sources.items()},
        "counts": plan.counts,
        "consumed": consumed,
        "global_step": trainer.state.global_step,
    }
    with open(os.path.join(a.out_dir, f"rank{state().process_index}.json"), "w") as f:
        json.dump(record, f)


def cli(a):
    from mixwise.cli.main import main

    data = a.data_dir
    argv = ["select", "--method", "icons", "--model", a.model_dir, "--out", os.path.join(a.out_dir, "select")]
    argv += ["--pool", *[os.path.join(data, "pool", f) for f in POOL], "--budget", str(BUDGET)]
    argv += ["--targets", *[os.path.join(data, "targets", f) for f in TARGETS]]
    argv += ["--work_dir", os.path.join(a.out_dir, "work"), "--plots", "false"]
    for key, value in SETTINGS.items():
        argv += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    code = main(argv)
    assert code == 0, code
    with open(os.path.join(a.out_dir, f"rank{state().process_index}.json"), "w") as f:
        json.dump({"world": state().num_processes}, f)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["callback", "cli"])
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("data_dir", nargs="?")
    p.add_argument("--method", default="icons", choices=["icons", "cadc"])
    a = p.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    callback(a) if a.mode == "callback" else cli(a)
    shutdown()


if __name__ == "__main__":
    main()
