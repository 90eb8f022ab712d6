"""Toy-world generation speed: seconds to make 1,000 rows of each family, against drawing the same number of
blank images with PIL in the same run (the floor any generator pays).

    python benchmarks/toy.py [--rows 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

from PIL import Image

from mixwise import toy


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    a = parser.parse_args()
    toy.make_source("digits", 1)  # load scikit-learn's digits once
    floor = best_of(lambda: [Image.new("RGB", (32, 32)).tobytes() for _ in range(a.rows)], a.repeats)
    print(f"{'family':<10} {'seconds':>8} {'rows/s':>9} {'x blank images':>15}")
    for family in toy.FAMILIES:
        seconds = best_of(lambda f=family: toy.make_source(f, a.rows), a.repeats)
        print(f"{family:<10} {seconds:8.3f} {a.rows / seconds:9.0f} {seconds / floor:15.1f}")


if __name__ == "__main__":
    main()
