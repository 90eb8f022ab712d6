"""Test helper for the MM-GEN tests: a tiny LLaVA taught to answer MM-GEN prompts with valid JSON.

A randomly initialised zoo model emits garbage, which exercises only the reject path. To exercise the valid path
with a *real* model (local generation, `transformers serve`, the project's server), the tiny LLaVA is fine-tuned
for a few seconds on varied MM-GEN prompts (built with `mixwise.mmgen.generation.build_prompt`, toy images of every
colour) to answer with one fixed JSON array of two pairs (`TARGET`). Nothing is faked at generation time: the
model's own greedy output goes through the parser.

Run as a script to build one: `python tests/scripts/mmgen_models.py OUT_DIR`.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import torch

from mixwise.mmgen import build_prompt
from mixwise.signals.encoding import encode_rows
from mixwise.testing import build_tiny_llava
from mixwise.toy import make_source

COLOURS = ("red", "green", "blue", "yellow")
TASK = "Answer questions about the colour of the shape."
PAIRS = [{"Q": "What colour is the shape?", "A": "red"}, {"Q": "Is there a shape?", "A": "yes"}]
TARGET = json.dumps(PAIRS)


def _rows(n: int, seed: int) -> list[dict]:
    ds = make_source("colour", n, "train", seed=seed)
    rng = random.Random(seed)
    rows = []
    for r in ds:
        examples = [("What colour is the shape?", rng.choice(COLOURS)) for _ in range(rng.randint(0, 3))]
        prompt = build_prompt(TASK, rng.choice(COLOURS), examples, rng.randint(1, 4))
        rows.append(
            {
                "images": r["images"],
                "messages": [
                    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
                    {"role": "assistant", "content": [{"type": "text", "text": TARGET}]},
                ],
            }
        )
    return rows


def teach_json_llava(out_dir: str | Path, steps: int = 100, seed: int = 0) -> Path:
    """Fine-tune the zoo's tiny LLaVA (all weights, AdamW) to answer MM-GEN prompts with `TARGET`; save it."""
    model, processor = build_tiny_llava(seed=seed)
    rows = _rows(32, seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model trains fastest on one thread (and does not thrash a busy machine)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            batches = [encode_rows(rows[i : i + 8], processor) for i in range(0, len(rows), 8)]
            for step in range(steps):
                loss = model(**batches[step % len(batches)]).loss
                loss.backward()
                opt.step()
                opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    out = Path(out_dir)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


if __name__ == "__main__":
    teach_json_llava(sys.argv[1])
