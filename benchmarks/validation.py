"""Validation and `Mixture` construction at scale, against baselines measured in the same run.

    python benchmarks/validation.py [--jpeg_rows 3000] [--mixture_rows 5000000] [--sources 5] [--repeats 3]

1. **Validating a pool of 336-px JPEG rows** (saved to disk and memory-mapped, as datasets keep them). Baseline:
   PIL decoding the same JPEG bytes in one process (the per-core decode rate), times the cores available. Goal:
   `validate_source` with its default `num_proc` at >= 0.9x that. Also: one process against the per-core rate, the
   token checks with the tiny LLaVA processor, and a second run over the same data (cached).
2. **Building a mixture of `--mixture_rows` text rows** over `--sources` sources: `Mixture(..., validate=False)`
   plus its `dataset`, against a bare `datasets.concatenate_datasets` of the same sources, and against how mixwise
   0.1.0 built it (a Python list per source). Then the first validation of those rows and a cached rerun.

Timings are medians over `--repeats` runs, interleaved with their baseline; the machine may be shared, so the
ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

import datasets
import numpy as np
import pyarrow as pa
from datasets.table import InMemoryTable
from PIL import Image

from mixwise import Mixture, Source, validate_source
from mixwise.validation import default_num_proc

IMAGE_SIZE = 336


def jpeg(rng: np.random.Generator) -> bytes:
    """A 336x336 JPEG (quality 90) of smooth colour fields plus texture: decodes like a photo does."""
    coarse = rng.random((6, 6, 3)) * 255
    field = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))
    texture = rng.normal(0, 18, (IMAGE_SIZE, IMAGE_SIZE, 3))
    pixels = np.clip(field + texture, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def jpeg_pool(n: int, directory: str, distinct: int = 200) -> tuple[datasets.Dataset, list[bytes]]:
    rng = np.random.default_rng(0)
    blobs = [jpeg(rng) for _ in range(distinct)]
    rows = {
        "images": [[{"bytes": blobs[i % distinct], "path": None}] for i in range(n)],
        "messages": [
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "text": None}, {"type": "text", "text": f"What is in picture {i}?"}],
                },  # fmt: skip
                {"role": "assistant", "content": [{"type": "text", "text": f"answer {i}"}]},
            ]
            for i in range(n)
        ],
    }
    features = datasets.Features(
        {
            "images": datasets.List(datasets.Image()),
            "messages": datasets.List(
                {
                    "role": datasets.Value("string"),
                    "content": datasets.List({"type": datasets.Value("string"), "text": datasets.Value("string")}),
                }
            ),  # fmt: skip
        }
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(directory)
    ds = datasets.load_from_disk(directory)
    stored = [row[0]["bytes"] for row in ds.with_format("arrow")["images"].to_pylist()]
    return ds, stored


def decode_all(blobs: list[bytes]) -> None:
    for b in blobs:
        with Image.open(io.BytesIO(b)) as im:
            im.load()


_BLOBS: list[bytes] = []


def _decode_share(k: int, parts: int) -> None:
    decode_all(_BLOBS[k::parts])


def decode_in_processes(blobs: list[bytes], processes: int) -> None:
    """The same decoding split over `processes` forked processes: what this machine gives in parallel right now."""
    import multiprocessing

    global _BLOBS
    _BLOBS = blobs
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        pool.starmap(_decode_share, [(k, processes) for k in range(processes)])


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(timed(fn))
    return {k: statistics.median(v) for k, v in times.items()}


def text_pool(rows: int, sources: int) -> dict[str, datasets.Dataset]:
    pool = {}
    per = rows // sources
    for k in range(sources):
        ids = np.arange(per)
        table = pa.table(
            {
                "prompt": pa.array(np.char.add(f"s{k} question ", ids.astype(str))),
                "answer": pa.array(ids.astype(str)),
            }
        )
        pool[f"s{k}"] = datasets.Dataset(InMemoryTable(table), fingerprint=f"bench-text-{k}-{per}")
    return pool


def earlier_dataset(pool: dict[str, datasets.Dataset]) -> datasets.Dataset:
    """`Mixture.dataset` as mixwise 0.1.0 built it."""
    return datasets.concatenate_datasets([ds.add_column("source", [name] * len(ds)) for name, ds in pool.items()])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jpeg_rows", type=int, default=3000)
    p.add_argument("--mixture_rows", type=int, default=5_000_000)
    p.add_argument("--sources", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_earlier", action="store_true", help="Skip timing mixwise 0.1.0's construction (slow).")
    a = p.parse_args()
    cores = default_num_proc()
    datasets.disable_progress_bars()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MIXWISE_CACHE"] = os.path.join(tmp, "cache")
        ds, blobs = jpeg_pool(a.jpeg_rows, os.path.join(tmp, "jpeg"))
        source = Source("jpeg", ds)
        n = len(ds)
        kb = np.mean([len(b) for b in blobs]) / 1024
        print(f"== validating {n:,} rows of {IMAGE_SIZE}-px JPEG ({kb:.0f} KiB each), {cores} cores available ==")
        t = interleaved(
            {
                "decode": lambda: decode_all(blobs),
                "pool": lambda: decode_in_processes(blobs, cores),
                "one": lambda: validate_source(source, num_proc=1, cache=False, progress=False),
                "all": lambda: validate_source(source, cache=False, progress=False),
            },
            a.repeats,
        )
        per_core = n / t["decode"]
        print("| what | rows/s | x per-core decode | x per-core decode x cores |")
        print("|---|---:|---:|---:|")
        print(f"| PIL decode, one process (baseline) | {per_core:,.0f} | 1.00 | {1 / cores:.2f} |")
        rate = n / t["pool"]
        print(f"| PIL decode, {cores} forked processes (what the machine gives now) | {rate:,.0f} | {rate / per_core:.2f} | {rate / per_core / cores:.2f} |")  # fmt: skip
        for key, label in (("one", "validate_source, num_proc=1"), ("all", f"validate_source, num_proc={cores} (default)")):  # fmt: skip
            rate = n / t[key]
            print(f"| {label} | {rate:,.0f} | {rate / per_core:.2f} | {rate / per_core / cores:.2f} |")
        from mixwise.testing import build_tiny_llava

        _, processor = build_tiny_llava(seed=0)
        tok = timed(lambda: validate_source(source, cache=False, progress=False, processing_class=processor))
        rate = n / tok
        print(f"| the same + token checks (tiny LLaVA processor) | {rate:,.0f} | {rate / per_core:.2f} | {rate / per_core / cores:.2f} |")  # fmt: skip
        validate_source(source, progress=False)  # fills the cache
        cached = timed(lambda: validate_source(source, progress=False))
        print(f"second run over the same data (cached): {cached * 1000:.1f} ms ({t['all'] / cached:,.0f}x faster)")

        print(f"\n== a mixture of {a.mixture_rows:,} text rows over {a.sources} sources ==")
        pool = text_pool(a.mixture_rows, a.sources)
        fns = {
            "concat": lambda: datasets.concatenate_datasets(list(pool.values())),
            "mixwise": lambda: Mixture(pool, budget=1000, validate=False).dataset,
        }
        if not a.no_earlier:
            fns["earlier"] = lambda: earlier_dataset(pool)
        t = interleaved(fns, a.repeats)
        mixed = Mixture(pool, budget=1000, validate=False).dataset
        assert len(mixed) == a.mixture_rows // a.sources * a.sources
        assof = earlier_dataset(pool)._fingerprint if not a.no_earlier else None
        print("| what | median s | x concatenate_datasets |")
        print("|---|---:|---:|")
        print(f"| datasets.concatenate_datasets (baseline) | {t['concat']:.3f} | 1.00 |")
        print(f"| Mixture(validate=False) + .dataset | {t['mixwise']:.3f} | {t['mixwise'] / t['concat']:.1f} |")
        if "earlier" in t:
            print(f"| the same as mixwise 0.1.0 built it (Python lists) | {t['earlier']:.3f} | {t['earlier'] / t['concat']:.1f} |")  # fmt: skip
            print(f"fingerprint identical to 0.1.0's: {mixed._fingerprint == assof}")
        first = timed(lambda: Mixture(pool, budget=1000))
        again = timed(lambda: Mixture(pool, budget=1000).dataset)
        rows = a.mixture_rows // a.sources * a.sources
        print(f"Mixture(...) validating every row, first run: {first:.1f} s ({rows / first:,.0f} rows/s, {cores} processes)")  # fmt: skip
        print(f"the same again (cached validation) + .dataset: {again:.2f} s")


if __name__ == "__main__":
    main()
