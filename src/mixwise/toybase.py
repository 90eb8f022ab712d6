"""The pre-trained toy base: one LLaVA pre-trained on the toy world, built with one command and cached by fingerprint.

The demo (`mixwise demo`), the selection benchmarks and users' experiments share one competent base model: a LLaVA
from [`mixwise.testing.build_llava`] (random init, the zoo's tokenizer and processor; 0.36M parameters by default)
pre-trained on a *pre-training split* of every toy family — rows generated with their own seed (`data_seed`), so
they are not the rows a pool or a target is made of. The pre-training is **data-limited**: few rows per family (60),
many epochs (60). The base has learned the format and the visual features, and generalises part of the way on every
family (validation exact match 0.2-0.9 per family): more rows of a family still improve it a lot, so a fine-tuning
budget spent on the right family beats one spread at random (the benchmark's learnability gate checks this before
reporting anything). A base pre-trained on few steps instead learned nothing reliably (whether the features "click"
within ~650 steps depended on the data order), and one pre-trained to convergence on many rows left no room.

* **One command**: `mixwise toy-base` (or [`build_toy_base`]) builds it and prints its directory; a second call with
  the same [`ToyBaseConfig`] finds it in the cache and returns at once.
* **Deterministic**: the model initialisation, the pre-training rows and their order are seeded by the config, and the
  training runs on one torch thread (so the reduction order, hence the weights, are the same in every run).
* **Cached by fingerprint**: `<cache>/toy-base-<fingerprint>/`, the fingerprint a hash of the config, the toy world's
  version ([`WORLD_VERSION`]) and mixwise's version; the cache is `$MIXWISE_CACHE` or `~/.cache/mixwise`. The
  directory is written under a temporary name and renamed when complete, so a crashed build is never reused.

The training helpers the base is built with are public, so that benchmarks fine-tune with exactly the same recipe:
[`EncodedRows`] encodes rows once (answer-token labels, [`mixwise.signals.encoding.encode_rows`]), [`train_rows`]
runs plain full fine-tuning (AdamW, linear decay, answer tokens only) and [`exact_match`] measures greedy-decoding
exact match with one teacher-forced forward pass (see its docstring for why that is the same thing).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .files import atomic_write_json
from .fingerprint import short_hash
from .signals.encoding import encode_rows, tokenizer_of
from .toy import FAMILIES, make_source

__all__ = [
    "BASE_FILE",
    "WORLD_VERSION",
    "EncodedRows",
    "ToyBaseConfig",
    "build_toy_base",
    "cache_root",
    "exact_match",
    "load_toy_base",
    "one_thread",
    "toy_base_dir",
    "train_rows",
]

WORLD_VERSION = "grid-2"
"""Version of the toy world's generators: part of the base's fingerprint (a changed world makes a new base)."""
BASE_FILE = "toy_base.json"
IGNORE_INDEX = -100


@dataclass
class ToyBaseConfig:
    """What determines the toy base (every field is part of its fingerprint).

    The model is a LLaVA of `vision_hidden`-wide CLIP layers and `text_hidden`-wide Llama layers; it is pre-trained
    on `pretrain_rows` rows of each family's train split generated with `data_seed` (pools are made with small seeds,
    so the rows differ; the handwritten `digits` draw from sklearn's train images in another seeded order, so a few
    images recur, placed and inked differently), for `pretrain_epochs` epochs at `learning_rate` (AdamW, linear
    decay), one torch thread. About 1.5 minutes on one CPU core.
    """

    seed: int = field(default=0, metadata={"help": "Seed of the model initialisation and of the data order."})
    data_seed: int = field(default=1000, metadata={"help": "Seed of the pre-training rows (not a pool's seed)."})
    families: list[str] | None = field(default=None, metadata={"help": "Families pre-trained on (default: all)."})
    pretrain_rows: int = field(default=60, metadata={"help": "Pre-training rows per family."})
    pretrain_epochs: int = field(default=60, metadata={"help": "Pre-training epochs."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (AdamW, linear decay)."})
    batch_size: int = field(default=16, metadata={"help": "Rows per optimisation step."})
    vision_hidden: int = field(default=48, metadata={"help": "Width of the CLIP vision tower."})
    vision_layers: int = field(default=2, metadata={"help": "Layers of the CLIP vision tower."})
    text_hidden: int = field(default=96, metadata={"help": "Width of the Llama language model."})
    text_layers: int = field(default=2, metadata={"help": "Layers of the Llama language model."})

    def __post_init__(self):
        for name in ("pretrain_rows", "pretrain_epochs", "batch_size", "vision_hidden", "text_hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = [f for f in self.families or () if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown toy families {unknown}; valid families are {list(FAMILIES)}")

    @property
    def family_list(self) -> list[str]:
        return list(self.families or FAMILIES)

    def fingerprint(self) -> str:
        """A stable hash of the config, the toy world's version and mixwise's version."""
        d = asdict(self)
        d["families"] = self.family_list
        return short_hash(
            json.dumps({"config": d, "world": WORLD_VERSION, "mixwise": __version__}, sort_keys=True), 12
        )


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """`cache_dir`, else `$MIXWISE_CACHE`, else `~/.cache/mixwise`."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MIXWISE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mixwise"


def toy_base_dir(config: ToyBaseConfig | None = None, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the base of `config` lives (built or not)."""
    config = config or ToyBaseConfig()
    return cache_root(cache_dir) / f"toy-base-{config.fingerprint()}"


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block on one torch thread (deterministic reductions; tiny models are fastest so on a shared CPU)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ----------------------------------------------------------------------------------------------------------------
# training helpers
# ----------------------------------------------------------------------------------------------------------------


class EncodedRows:
    """Rows encoded once for training and evaluation: per row, its token ids, answer-token labels and pixels.

    [`encode_rows`] does the encoding (labels keep the answer tokens only, the same convention every signal uses);
    [`batch`] right-pads any subset back into a model batch.
    """

    def __init__(self, rows: Sequence[Mapping[str, Any]], processing_class: Any, chunk: int = 64):
        tok = tokenizer_of(processing_class)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.eos_id = tok.eos_token_id
        self.items: list[dict[str, torch.Tensor]] = []
        for k in range(0, len(rows), chunk):
            enc = encode_rows(rows[k : k + chunk], processing_class, start_index=k)
            lengths = enc["attention_mask"].sum(dim=1).tolist()
            for j, n in enumerate(lengths):
                item = {"input_ids": enc["input_ids"][j, :n], "labels": enc["labels"][j, :n]}
                if "pixel_values" in enc:
                    item["pixel_values"] = enc["pixel_values"][j]
                self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        items = [self.items[i] for i in indices]
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for j, it in enumerate(items):
            n = len(it["input_ids"])
            ids[j, :n], labels[j, :n], mask[j, :n] = it["input_ids"], it["labels"], 1
        out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if "pixel_values" in items[0]:
            out["pixel_values"] = torch.stack([it["pixel_values"] for it in items])
        return out


def train_rows(
    model: torch.nn.Module,
    data: EncodedRows,
    indices: Sequence[int] | None = None,
    epochs: float = 3,
    learning_rate: float = 1e-3,
    batch_size: int = 16,
    seed: int = 0,
    progress: Any = None,
) -> list[float]:
    """Full fine-tuning of `model` on `data[indices]` (default: every row; repeats allowed): AdamW (no weight
    decay), linear decay to 5% of `learning_rate`, gradient norm clipped at 1, a seeded shuffle every epoch, loss on
    answer tokens only. Returns the loss of every step; leaves the model in eval mode.

    A fractional `epochs` trains on the first `round(epochs · n)` rows of the last shuffle.
    """
    order_rows = list(range(len(data))) if indices is None else [int(i) for i in indices]
    if not order_rows:
        return []
    rng = random.Random(seed)
    n_seen = round(epochs * len(order_rows))
    stream: list[int] = []
    while len(stream) < n_seen:
        epoch = list(order_rows)
        rng.shuffle(epoch)
        stream += epoch
    stream = stream[:n_seen]
    steps = math.ceil(len(stream) / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.05, 1 - k / max(1, steps)))
    model.train()
    losses = []
    for k in range(0, len(stream), batch_size):
        loss = model(**data.batch(stream[k : k + batch_size])).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        if progress is not None:
            progress.update()
    model.eval()
    return losses


@torch.no_grad()
def exact_match(model: torch.nn.Module, data: EncodedRows, indices: Sequence[int] | None = None, chunk: int = 64):
    """Per-row greedy-decoding exact match (a bool array), with one teacher-forced forward pass per chunk.

    Greedy decoding reproduces the reference answer exactly iff, fed the reference prefix, the model's arg-max next
    token is the reference token at every answer position up to and including the end-of-turn token (the first
    mismatch is where greedy decoding would leave the reference). So this is the exact match of `generate(...,
    do_sample=False)` on token sequences, at the cost of one forward pass instead of one per generated token.
    """
    rows = list(range(len(data))) if indices is None else [int(i) for i in indices]
    out = np.zeros(len(rows), dtype=bool)
    model.eval()
    for k in range(0, len(rows), chunk):
        batch = data.batch(rows[k : k + chunk])
        labels = batch.pop("labels")
        logits = model(**batch).logits
        pred = logits[:, :-1].argmax(-1)
        target = labels[:, 1:]
        for j in range(len(target)):
            pos = torch.nonzero(target[j] != IGNORE_INDEX).flatten()
            ref = target[j, pos]
            if data.eos_id is not None:
                ends = torch.nonzero(ref == data.eos_id).flatten()
                if len(ends):
                    pos, ref = pos[: int(ends[0]) + 1], ref[: int(ends[0]) + 1]
            out[k + j] = bool(torch.equal(pred[j, pos], ref))
    return out


# ----------------------------------------------------------------------------------------------------------------
# the base
# ----------------------------------------------------------------------------------------------------------------


def _build_model(config: ToyBaseConfig):
    from .testing import build_llava

    heads = 4
    return build_llava(
        seed=config.seed,
        vision_hidden=config.vision_hidden,
        vision_layers=config.vision_layers,
        vision_heads=heads,
        vision_intermediate=2 * config.vision_hidden,
        text_hidden=config.text_hidden,
        text_layers=config.text_layers,
        text_heads=heads,
        text_kv_heads=heads,
        text_intermediate=2 * config.text_hidden,
        name="mixwise-toy-base",
    )


def pretrain_rows(config: ToyBaseConfig) -> list[dict]:
    """The base's pre-training rows: `pretrain_rows` of each family's train split, generated with `data_seed`."""
    return [
        r for f in config.family_list for r in make_source(f, config.pretrain_rows, "train", seed=config.data_seed)
    ]


def build_toy_base(
    config: ToyBaseConfig | None = None,
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
) -> Path:
    """The directory of the pre-trained toy base of `config`, building it first unless the cache holds it.

    The directory holds the model and processor (`save_pretrained`, loadable with [`mixwise.models.load_model`] or
    [`load_toy_base`]) and `toy_base.json` (config, fingerprint, final loss, per-family exact match on 100 rows of
    each family's validation split).
    """
    config = config or ToyBaseConfig()
    out = toy_base_dir(config, cache_dir)
    if (out / BASE_FILE).exists() and not force:
        return out
    from tqdm.auto import tqdm

    out.parent.mkdir(parents=True, exist_ok=True)
    with one_thread():
        model, processor = _build_model(config)
        rows = pretrain_rows(config)
        data = EncodedRows(rows, processor)
        steps = math.ceil(config.pretrain_epochs * len(rows) / config.batch_size)
        bar = tqdm(total=steps, desc="pre-training the toy base", disable=not progress)
        losses = train_rows(
            model, data, None, config.pretrain_epochs, config.learning_rate, config.batch_size, config.seed, bar
        )
        bar.close()
        accuracy = {}
        for f in config.family_list:
            check = EncodedRows(list(make_source(f, 100, "validation", seed=config.data_seed)), processor)
            accuracy[f] = float(exact_match(model, check).mean())
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", dir=out.parent))
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        info = {
            "config": asdict(config),
            "fingerprint": config.fingerprint(),
            "world": WORLD_VERSION,
            "mixwise": __version__,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "final_loss": float(np.mean(losses[-10:])),
            "validation_exact_match": accuracy,
        }
        atomic_write_json(tmp / BASE_FILE, info, indent=1)
        if out.exists():  # force=True, or a stale incomplete directory
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def load_toy_base(
    config: ToyBaseConfig | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
):
    """`(model, processor)` of the toy base (built first if the cache does not hold it), in eval mode."""
    from .models import load_model

    path = build_toy_base(config, cache_dir, progress=progress)
    model, processor = load_model(path)
    return model.eval(), processor
