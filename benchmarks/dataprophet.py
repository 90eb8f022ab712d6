"""DataProphet scoring throughput next to a bare batched forward pass of the same model on the same rows.

    python benchmarks/dataprophet.py [--rows 256] [--batch_size 16] [--repeats 2]

Scoring computes every signal of every row: answer-token NLL (one forward of the full conversation), Q and A text
embeddings (one forward each of the language model) and the image embedding (vision tower + projector), then the
diversity k-means. The baseline is one forward of the full conversation per row (what a perplexity pass alone
costs). Prints samples/s of each and the ratio (goal in the issue: ≥ 0.8).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mixwise.dataprophet import DataProphet, DataProphetConfig
from mixwise.encoding import encode_rows
from mixwise.testing import build_tiny_llava
from mixwise.toy import make_source


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    model, processor = build_tiny_llava(seed=0)
    source = make_source("chart", a.rows, seed=0)
    target = make_source("count", 16, split="validation", seed=0)
    rows = [source[i] for i in range(len(source))]

    @torch.no_grad()
    def bare():
        for k in range(0, len(rows), a.batch_size):
            batch = encode_rows(rows[k : k + a.batch_size], processor)
            batch.pop("labels")
            model(**batch)

    def score():
        settings = DataProphetConfig(subsample=None, progress=False, n_clusters=10)
        settings.perplexity.batch_size = a.batch_size
        settings.embedding.batch_size = a.batch_size
        DataProphet(settings).score({"chart": source}, {"count": target}, model, processor, model_id="bench")

    def timed(fn):
        times = []
        for _ in range(a.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    bare()  # warm
    t_bare, t_score = timed(bare), timed(score)
    n_target = len(target)
    print(f"rows={a.rows} (+{n_target} target rows scored too) batch={a.batch_size} threads={torch.get_num_threads()}")
    print(f"{'what':<44} {'samples/s':>10}")
    print(f"{'bare batched forward (full conversation)':<44} {a.rows / t_bare:>10.1f}")
    print(f"{'DataProphet scoring (all signals)':<44} {(a.rows + n_target) / t_score:>10.1f}")
    print(f"ratio (scoring / bare): {((a.rows + n_target) / t_score) / (a.rows / t_bare):.2f}")


if __name__ == "__main__":
    main()
