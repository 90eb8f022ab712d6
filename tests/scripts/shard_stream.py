"""Each rank iterates an accelerate-prepared DataLoader over a MixtureSampler and writes what it received."""

import json
import sys

from accelerate import Accelerator
from torch.utils.data import DataLoader

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from helpers import text_sources  # noqa: E402

from mixwise import Mixture, MixtureSampler, Plan  # noqa: E402
from mixwise.distributed import shutdown  # noqa: E402

out_dir = sys.argv[1]
accelerator = Accelerator(cpu=True)
mixture = Mixture(text_sources({"a": 30, "b": 50, "c": 7}), budget=64, seed=11)
mixture.set_plan(Plan.from_weights({"a": 1, "b": 2, "c": 1}, mixture.sizes, 64, seed=11))
sampler = MixtureSampler(mixture, seed=11)
loader = accelerator.prepare(DataLoader(list(range(mixture.total_size)), batch_size=4, sampler=sampler))
received = {}
for epoch in range(2):
    loader.set_epoch(epoch)
    received[epoch] = [int(i) for batch in loader for i in batch.tolist()]
with open(f"{out_dir}/rank{accelerator.process_index}.json", "w") as f:
    json.dump({"received": received, "world": accelerator.num_processes}, f)
shutdown()
