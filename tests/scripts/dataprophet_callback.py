"""DataProphet inside a real trainer: the selection callback scores with the live model at train begin, the scoring
work split across ranks.

usage: dataprophet_callback.py MODEL_DIR OUT_DIR

Every rank writes `OUT_DIR/rank{r}.json` with the metric it computed, the installed plan's counts and how many
scoring items it computed itself. `POOL`, `TARGETS`, `BUDGET` and `SETTINGS` are imported by the test to compute
the same thing in one process.
"""

import json
import os
import sys

from mixwise import Mixture, attach
from mixwise.dataprophet import DataProphet
from mixwise.distributed import shutdown, state
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source

FAMILIES = ("count", "colour", "ocr")
BUDGET = 24
SETTINGS = {"subsample": 16, "progress": False}


def pool():
    return {f: make_source(f, 20, split="train", seed=3) for f in FAMILIES}


def targets():
    return {f: make_source(f, 10, split="test", seed=3) for f in FAMILIES}


def main():
    from transformers import AutoModelForImageTextToText, AutoProcessor
    from trl import SFTConfig, SFTTrainer

    model_dir, out_dir = sys.argv[1], sys.argv[2]
    mixture = Mixture(pool(), budget=BUDGET, seed=5)
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    args = SFTConfig(**cpu_trainer_kwargs(os.path.join(out_dir, "run"), max_steps=1, seed=5, max_length=None))
    trainer = SFTTrainer(model=model, args=args, train_dataset=mixture.dataset, processing_class=processor)
    selector = DataProphet(**SETTINGS)
    attach(trainer, mixture, selector=selector, targets=targets(), model_id="tiny-llava")
    trainer.train()
    rank = state().process_index
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "world": state().num_processes,
                "metric": selector.last_result.metric().to_dict(),
                "plan_counts": mixture.plan.counts,
                "work": selector.last_work,
            },
            f,
        )
    shutdown()


if __name__ == "__main__":
    main()
