"""`mixwise toy-base`: build (or find in the cache) the pre-trained toy base and print its directory."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .main import parse_with


@dataclass
class ToyBaseArguments:
    """`mixwise toy-base`: the pre-trained toy base of `mixwise.toybase` (built once, then read from the cache)."""

    cache_dir: str | None = field(
        default=None, metadata={"help": "Cache directory (default: $MIXWISE_CACHE, else ~/.cache/mixwise)."}
    )
    force: bool = field(default=False, metadata={"help": "Rebuild even if the cache holds the base."})


def parse(argv, prog: str, description: str) -> tuple:
    from ..toybase import ToyBaseConfig

    return parse_with([ToyBaseArguments, ToyBaseConfig], argv, prog, description)


def run(args: ToyBaseArguments, config) -> int:
    import time

    from ..toybase import BASE_FILE, build_toy_base, toy_base_dir

    cached = (toy_base_dir(config, args.cache_dir) / BASE_FILE).exists() and not args.force
    start = time.time()
    path = build_toy_base(config, args.cache_dir, force=args.force)
    info = json.loads((path / BASE_FILE).read_text())
    how = "found in the cache" if cached else f"built in {time.time() - start:.0f}s"
    accuracy = ", ".join(f"{k} {v:.2f}" for k, v in info["validation_exact_match"].items())
    print(f"mixwise toy-base: {how} ({info['parameters'] / 1e6:.2f}M parameters); validation exact match: {accuracy}")
    print(path)
    return 0
