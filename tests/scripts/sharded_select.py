"""Selection from the callback of a real SFTTrainer whose model is sharded (FSDP2 or DeepSpeed ZeRO-3) or not (DDP),
under torchrun; every rank records what it selected.

usage: sharded_select.py SHARDING MODEL_DIR OUT_DIR METHOD [METHOD ...]
SHARDING: ddp (plain, the reference), fsdp2, zero3. METHOD: dataprophet, icons (a temporary LoRA on the live
model), icons_warmup (a LoRA warm-up trained on the live model first), cadc.

* fsdp2: the model is sharded as accelerate's FSDP2 plugin shards it (`fully_shard` on every module whose class is
  in `model._no_split_modules` — the transformer layers — then on the root). accelerate does not shard on CPU, so the
  script shards the model itself and marks it as sharded at load time (transformers' own FSDP2 loading sets the same
  flag), so that the Trainer trains it as it is instead of wrapping it in DDP.
* zero3: `SFTConfig(deepspeed={... "zero_optimization": {"stage": 3}})`, the Trainer's own DeepSpeed path
  (parameters partitioned at load time by `zero.Init`).

For each METHOD in turn (a fresh model and trainer each), the selection runs in the selection callback at train
begin (the live, sharded model), then one training step. Every rank writes `OUT_DIR/rank{r}.json` with, per
method, the plan's rows, the method's numbers (DataProphet's metric, ICONS's scores, CADC's stages) and how the
callback's model was sharded; the datastores are in OUT_DIR/METHOD/work.
"""

import argparse
import json
import os

import numpy as np

from mixwise import Mixture, attach
from mixwise.distributed import init_state, shutdown, state
from mixwise.testing import cpu_trainer_kwargs
from mixwise.toy import make_source

POOL = {"count": 8, "colour": 6, "ocr": 7}


def pool():
    return {f: make_source(f, n, seed=1) for f, n in POOL.items()}


def targets():
    count = make_source("count", 4, split="validation", seed=2)
    count = count.add_column("subtask", ["small", "small", "big", "big"])
    return {"count": count, "ocr": make_source("ocr", 3, split="validation", seed=2)}


def make_selector(method, out_dir):
    common = dict(work_dir=os.path.join(out_dir, "work"), proj_dim=32, chunk_size=4, batch_size=4, progress=False)
    if method == "dataprophet":
        from mixwise.dataprophet import DataProphet

        return DataProphet(subsample=5, n_clusters=2, progress=False)
    if method in ("icons", "icons_warmup"):
        from mixwise.icons import ICONS

        warmup = dict(run_warmup=True, warmup_preset="tiny") if method == "icons_warmup" else {}
        return ICONS(plots=False, **warmup, **common)
    from mixwise.cadc import CADC

    return CADC(subtask_column={"count": "subtask"}, **common)


def record(method, selector, plan):
    out = {"rows": {n: s.rows for n, s in plan.sources.items()}}
    out["counts"] = plan.counts
    if method == "dataprophet":
        out["metric"] = selector.last_result.metric().to_dict()
    elif method in ("icons", "icons_warmup"):
        out["scores"] = np.asarray(selector.result.influence.scores).tolist()
    else:
        out["stages"] = [{n: s.rows for n, s in st.sources.items()} for st in plan.stages]
    return out


def select_with(method, sharding, model_dir, out_dir):
    """One SFTTrainer run (a fresh model, sharded as asked) whose callback selects with `method`."""
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from mixwise.distributed import sharding as sharding_of

    out_dir = os.path.join(out_dir, method)
    mixture = Mixture(pool(), budget=6, seed=5)
    extra = {}
    if sharding == "zero3":  # before the model is loaded: transformers partitions it at load time (zero.Init)
        zero3 = {"stage": 3, "stage3_param_persistence_threshold": 0}
        extra["deepspeed"] = {
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "zero_optimization": zero3,
            "zero_allow_untested_optimizer": True,
        }
    args = SFTConfig(**cpu_trainer_kwargs(os.path.join(out_dir, "run"), max_steps=1, seed=5, max_length=None, **extra))
    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    if sharding == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        layers = set(model._no_split_modules)
        for module in model.modules():
            if type(module).__name__ in layers:
                fully_shard(module)
        fully_shard(model)
        model._is_distributed_loading_by_transformers = True  # the Trainer trains it as it is (no DDP around it)
    trainer = SFTTrainer(model=model, args=args, train_dataset=mixture.dataset, processing_class=processor)
    seen = {}

    class Sharding(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen["sharding"] = sharding_of(model)

    trainer.add_callback(Sharding())
    selector = make_selector(method, out_dir)
    attach(trainer, mixture, selector=selector, targets=targets(), model_id="tiny-llava")
    trainer.train()
    out = record(method, selector, mixture.plan)
    out["sharding"] = seen["sharding"]  # what the callback was handed
    out["trained_sharded"] = any(
        hasattr(p, "ds_id") or type(p).__name__ == "DTensor" for p in trainer.model.parameters()
    )
    out["global_step"] = trainer.state.global_step
    return out


def main():
    p = argparse.ArgumentParser()
    p.add_argument("sharding", choices=["ddp", "fsdp2", "zero3"])
    p.add_argument("model_dir")
    p.add_argument("out_dir")
    p.add_argument("methods", nargs="+", choices=["dataprophet", "icons", "icons_warmup", "cadc"])
    a = p.parse_args()
    init_state()
    os.makedirs(a.out_dir, exist_ok=True)
    out = {"world": state().num_processes}
    for method in a.methods:
        out[method] = select_with(method, a.sharding, a.model_dir, a.out_dir)
    with open(os.path.join(a.out_dir, f"rank{state().process_index}.json"), "w") as f:
        json.dump(out, f)
    shutdown()


if __name__ == "__main__":
    main()
