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


def read_json_file(path: str, option: str) -> object:
    """The JSON value in `path`; a missing or unreadable file, or one that is not JSON, is a usage error naming
    the option and the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise UsageError(f"{option} {path!r}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{option} {path!r} is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{option} {path!r} is not JSON ({err})") from None


def read_mapping(path: str, option: str, what: str) -> dict:
    value = read_json_file(path, option)
    if not isinstance(value, dict):
        raise UsageError(
            f"{option} {path!r} must hold a JSON object {{source: {what}}}, got a JSON {type(value).__name__}"
        )
    if not value:
        raise UsageError(f"{option} {path!r} is an empty JSON object: no sources")
    return value


def run(args: AllocateArguments) -> int:
    from ..plan import Plan, check_budget, check_weights
    from ..sources import load_sources

    if not args.weights:
        raise UsageError("--weights is required: a JSON file {source: weight} or a selection.json")
    if args.budget is None:
        raise UsageError("--budget is required: the number of rows to allocate (a positive whole number)")
    try:
        budget = check_budget(args.budget, "--budget")
    except ValueError as err:
        raise UsageError(str(err)) from None
    weights = read_mapping(args.weights, "--weights", "weight")
    sizes = None
    if "sources" in weights and "method" in weights:  # a selection.json: its weights, and its sizes
        if not isinstance(weights["sources"], dict):
            raise UsageError(
                f"--weights {args.weights!r} looks like a selection.json but its 'sources' is not an object"
            )
        sizes = {n: s.get("size") for n, s in weights["sources"].items() if isinstance(s, dict)}
        weights = {n: s.get("weight") for n, s in weights["sources"].items() if isinstance(s, dict)}
    check_weights(weights)  # a bad weight is named before anything is loaded
    if args.sources:
        try:
            sources = load_sources(args.sources, split=args.split)
        except ValueError as err:
            raise UsageError(str(err)) from None
        sizes = {src.name: len(src) for src in sources}
        unweighted = [n for n in sizes if n not in weights]
        if unweighted:
            raise UsageError(
                f"--sources {unweighted} have no weight in {args.weights!r}; give every source a weight (0 to leave "
                "it out)"
            )
    elif args.sizes:
        sizes = read_mapping(args.sizes, "--sizes", "rows")
    elif sizes is None:
        raise UsageError(
            "give the sources' sizes: --sources DIR ... (datasets on disk) or --sizes FILE (JSON {source: rows}); "
            "a plan cannot draw rows without knowing how many each source has"
        )
    plan = Plan.from_weights(weights, sizes, budget, method="fixed_weights", seed=args.seed)
    path = plan.save(args.out)
    for name, sp in plan.sources.items():
        flag = "  (repeats rows)" if sp.repeated else ""
        print(f"{name}\t{sp.count}\t{sp.weight:.4f}{flag}")
    print(f"wrote {path}")
    return 0
