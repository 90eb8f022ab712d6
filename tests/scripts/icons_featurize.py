"""Fill a gradient datastore for a fixed tiny LLaVA + LoRA and toy pool; optionally SIGKILL itself mid-way.

usage: icons_featurize.py STORE_DIR [--ref REF_DIR] [--kill_after_written K] [--record FILE]

`--ref`: first fill REF_DIR completely (an uninterrupted run). `--kill_after_written K`: send SIGKILL to this process
right after chunk K's rows are written and flushed but before the chunk is marked done (a real kill mid-way).
`--record`: append the chunk ids this process computed (one JSON list per line, rewritten after every chunk).
"""

import argparse
import json
import os
import signal

import torch
from peft import LoraConfig, get_peft_model

from mixwise.signals.datastore import Datastore, fill_store
from mixwise.signals.gradients import FeaturizerConfig, GradientFeaturizer
from mixwise.signals.projection import ProjectorSpec
from mixwise.testing import build_tiny_llava
from mixwise.toy import make_source

N_ROWS, CHUNK = 12, 2


def build():
    model, processor = build_tiny_llava(seed=0)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=r".*language_model.*\.(q_proj|v_proj|down_proj)", init_lora_weights=False
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_peft_model(model, config)
    featurizer = GradientFeaturizer(
        model, processor, FeaturizerConfig(batch_size=2), projector=ProjectorSpec(dim=32, seed=3, block_rows=256)
    )
    ds = make_source("count", N_ROWS // 2, seed=1)
    ds = __import__("datasets").concatenate_datasets([ds, make_source("ocr", N_ROWS // 2, seed=1)])
    return featurizer, ds


def get_rows_for(ds):
    def get_rows(ids):
        rows = [ds[int(i)] for i in ids]
        return rows, [("pool", int(i)) for i in ids]

    return get_rows


def open_store(path, featurizer, ds):
    identity = {"model": "tiny-llava", "features": featurizer.identity(), "dataset": ds._fingerprint}
    return Datastore.open_or_create(path, len(ds), featurizer.feature_dim, identity, chunk_size=CHUNK)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("store")
    p.add_argument("--ref", default=None)
    p.add_argument("--kill_after_written", type=int, default=None)
    p.add_argument("--record", default=None)
    a = p.parse_args()
    featurizer, ds = build()
    if a.ref:
        fill_store(open_store(a.ref, featurizer, ds), get_rows_for(ds), featurizer, progress=False)
    computed = []

    def on_chunk(event, c):
        if event == "written" and c == a.kill_after_written:
            os.kill(os.getpid(), signal.SIGKILL)
        if event == "done":
            computed.append(c)
            if a.record:
                with open(a.record, "w") as f:
                    json.dump(computed, f)

    fill_store(open_store(a.store, featurizer, ds), get_rows_for(ds), featurizer, on_chunk=on_chunk, progress=False)


if __name__ == "__main__":
    main()
