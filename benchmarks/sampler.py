"""How long drawing a 1,000,000-row plan takes, next to a plain `torch.randperm` of the same size (same run).

    python benchmarks/sampler.py [--rows 1000000] [--sources 10] [--repeats 5]

Prints the median wall time of each and the ratio. Three mixwise figures: the index stream of one epoch
(`Mixture.indices`, what the sampler computes), the same with row drawing from scratch (a new plan: includes
`Plan.resolve`), and the GRPO form (`RepeatMixtureSampler`, num_generations=8).
"""

from __future__ import annotations

import argparse
import statistics
import time

import datasets
import numpy as np
import torch

from mixwise import Mixture, Plan, RepeatMixtureSampler


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--sources", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()

    rng = np.random.default_rng(0)
    sizes = rng.integers(a.rows // a.sources // 2, 2 * a.rows // a.sources, size=a.sources)
    pool = {f"s{k}": datasets.Dataset.from_dict({"x": np.arange(int(n))}) for k, n in enumerate(sizes)}
    weights = {n: float(w) for n, w in zip(pool, rng.random(a.sources) + 0.1)}
    mixture = Mixture(pool, budget=a.rows, validate=False)
    plan = Plan.from_weights(weights, mixture.sizes, a.rows)
    mixture.set_plan(plan)
    mixture.indices(0)  # warm

    def fresh_plan():
        mixture.set_plan(plan)  # clears the cached row draw
        return mixture.indices(1)

    grpo = RepeatMixtureSampler(mixture, mini_repeat_count=8, batch_size=64, repeat_count=1)
    results = {
        "torch.randperm (baseline)": median_time(lambda: torch.randperm(a.rows), a.repeats),
        "mixwise epoch stream (Mixture.indices)": median_time(lambda: mixture.indices(2), a.repeats),
        "mixwise stream incl. drawing rows": median_time(fresh_plan, a.repeats),
        "mixwise GRPO stream (x8 generations)": median_time(lambda: grpo.indices(3), a.repeats),
    }
    base = results["torch.randperm (baseline)"]
    print(f"rows={a.rows:,} sources={a.sources} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'what':<42} {'median s':>10} {'x randperm':>11}")
    for name, t in results.items():
        print(f"{name:<42} {t:>10.4f} {t / base:>11.2f}")


if __name__ == "__main__":
    main()
