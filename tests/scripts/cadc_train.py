"""Train the tiny LLaVA with SFTTrainer on a CADC staged plan and record, on every rank, the rows consumed.

usage: cadc_train.py MODEL_DIR OUT_DIR [--resume CKPT] [--save_steps N]

The plan is made by CADC's own curation (`mixwise.cadc.curate` + `staged_plan`) from a fixed synthetic influence
matrix (3 capabilities, 8 rows each, self-influence built so that the stage order is c2, c0, c1) and installed by
the selection callback at train begin; every rank writes `OUT_DIR/rank{r}.json`.
"""

import argparse
import json
import os

import numpy as np

from mixwise import Mixture, attach
from mixwise.cadc import curate, staged_plan
from mixwise.distributed import shutdown, state
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source

FAMILIES = ("count", "colour", "spatial", "ocr")
BUDGET = 24


def synthetic_plan(mixture, seed):
    n = mixture.total_size
    rng = np.random.default_rng(0)
    influence = rng.normal(0, 0.1, (n, 3))
    influence[np.arange(n), np.arange(n) % 3] += 1.0  # row i belongs to capability i % 3
    # self-influence over 3 checkpoints: c2 falls fastest, then c0, c1 rises
    slopes = np.array([-0.3, 0.2, -0.6])[np.arange(n) % 3]
    si = np.stack([1.0 + slopes * t / 2 for t in range(3)])
    cur = curate(influence, si, BUDGET, weights=[1, 1, 1])
    plan, table = staged_plan(cur, mixture, method="cadc_fixed", seed=seed)
    plan.extra = {"stages": table}
    return plan


class FixedStaged:
    name = "cadc_fixed"

    def config(self):
        return {}

    def select(self, context):
        return synthetic_plan(context.mixture, context.seed)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("--resume", default=None)
    p.add_argument("--save_steps", type=int, default=0)
    a = p.parse_args()

    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    pool = {f: make_source(f, 12, seed=1) for f in FAMILIES}
    mixture = Mixture(pool, budget=BUDGET, seed=5)
    model = AutoModelForImageTextToText.from_pretrained(a.model_dir)
    processor = AutoProcessor.from_pretrained(a.model_dir)
    args = SFTConfig(
        **cpu_trainer_kwargs(
            os.path.join(a.out_dir, "run"),
            num_train_epochs=1,
            logging_steps=1,
            save_strategy="steps" if a.save_steps else "no",
            save_steps=a.save_steps or 500,
            seed=5,
            max_length=None,
        )
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=mixture.dataset, processing_class=processor)
    consumed = []
    collator = trainer.data_collator

    def recording(examples):
        consumed.extend(ex["id"] for ex in examples)
        return collator(examples)

    trainer.data_collator = recording
    attach(trainer, mixture, selector=FixedStaged())
    trainer.train(resume_from_checkpoint=a.resume)
    rank = state().process_index
    with open(os.path.join(a.out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"consumed": consumed, "world": state().num_processes, "global_step": trainer.state.global_step}, f)
    shutdown()


if __name__ == "__main__":
    main()
