"""`mixwise allocate --weights W.json --budget N --out plan.json`: per-source weights → an exact plan."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from .main import UsageError, parse_with


@dataclass
class AllocateArguments:
    """`mixwise allocate`: turn per-source weights into an exact plan under a budget."""

    weights: str = field(default="", metadata={"help": "JSON file: {source: weight} (or a selection.json)."})
    budget: int | None = field(default=None, metadata={"help": "Number of rows."})
    out: str = field(default="plan.json", metadata={"help": "Where to write the plan (selection.json format)."})
    sizes: str | None = field(
        default=None,
        metadata={"help": "JSON file {source: rows}; or give --sources to read sizes from datasets on disk."},
    )
    sources: list[str] | None = field(default=None, metadata={"help": "Source directories (save_to_disk)."})
    split: str = field(default="train", metadata={"help": "Split to read from DatasetDict sources."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing rows."})


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([AllocateArguments], argv, prog, description)


def run(args: AllocateArguments) -> int:
    from ..plan import Plan
    from ..sources import load_source

    if not args.weights or args.budget is None:
        raise UsageError("--weights and --budget are required")
    with open(args.weights) as f:
        weights = json.load(f)
    if isinstance(weights, dict) and "sources" in weights and "method" in weights:  # a selection.json
        weights = {n: s["weight"] for n, s in weights["sources"].items()}
    if args.sources:
        sizes = {}
        for path in args.sources:
            src = load_source(path, split=args.split)
            sizes[src.name] = len(src)
    elif args.sizes:
        with open(args.sizes) as f:
            sizes = json.load(f)
    else:
        # no sizes: every source is taken to be large enough (counts never exceed the source)
        sizes = {n: int(args.budget) for n in weights}
    plan = Plan.from_weights(weights, sizes, args.budget, method="fixed_weights", seed=args.seed)
    path = plan.save(args.out)
    for name, sp in plan.sources.items():
        flag = "  (repeats rows)" if sp.repeated else ""
        print(f"{name}\t{sp.count}\t{sp.weight:.4f}{flag}")
    print(f"wrote {path}")
    return 0
