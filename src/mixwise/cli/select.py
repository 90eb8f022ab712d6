"""`mixwise select --method icons|cadc|random|uniform`: per-sample selection of a pool for targets.

The command line is [`SelectArguments`] (what to select from, for which targets, how much, where to write) plus
every field of the method's configuration — [`mixwise.icons.ICONSConfig`] or [`mixwise.cadc.CADCConfig`], both
built on the shared feature pipeline ([`mixwise.signals.features.FeatureConfig`]): `mixwise select --method icons
--model M --pool A B --targets T --ratio 0.2 --proj_dim 4096 --aggregator round_robin`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from .main import UsageError, parse_with

FEATURE_METHODS = ("icons", "cadc")
ROW_METHODS = ("random", "uniform")


@dataclass
class SelectArguments:
    """What `mixwise select` selects from, for which targets, how much, and where it writes."""

    method: str = field(default="icons", metadata={"help": "Selector: icons or cadc (also: random, uniform)."})
    pool: list[str] | None = field(default=None, metadata={"help": "Pool source directories (save_to_disk)."})
    targets: list[str] | None = field(default=None, metadata={"help": "Target (validation set) directories."})
    ratio: float = field(default=0.2, metadata={"help": "Share of the pool to select (p_select)."})
    budget: int | None = field(default=None, metadata={"help": "Number of rows to select (overrides --ratio)."})
    out: str = field(default="mixwise-select", metadata={"help": "Output directory (work_dir default: OUT/work)."})
    pool_split: str = field(default="train", metadata={"help": "Split of DatasetDict pool sources."})
    target_split: str | None = field(
        default=None, metadata={"help": "Split of DatasetDict targets (default: validation, else test)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the plan (the method's own seeds are its fields)."})


def method_config_class(method: str) -> type | None:
    if method == "icons":
        from ..icons import ICONSConfig

        return ICONSConfig
    if method == "cadc":
        from ..cadc import CADCConfig

        return CADCConfig
    if method in ROW_METHODS:
        return None
    raise UsageError(f"unknown method {method!r} ({', '.join(FEATURE_METHODS + ROW_METHODS)})")


def parse(argv, prog: str, description: str) -> tuple:
    argv = list(argv)
    if "-h" in argv or "--help" in argv:  # the help lists the fields of the method asked for (default: icons)
        method = argv[argv.index("--method") + 1] if "--method" in argv else "icons"
    else:
        from trl import TrlParser

        (first, _rest) = TrlParser(dataclass_types=[SelectArguments]).parse_args_and_config(
            argv, return_remaining_strings=True
        )
        method = first.method
    config_class = method_config_class(method)
    if config_class is None:
        return (*parse_with([SelectArguments], argv, prog, description), None)
    return parse_with([SelectArguments, config_class], argv, prog, description)


def select(args: SelectArguments, config: Any) -> dict[str, Any]:
    """Run the selection; returns `{"plan", "selector", "paths", "total"}` (files are written by the main process)."""
    from ..distributed import is_main_process
    from ..mixture import Mixture
    from ..registry import make_selector
    from ..selectors import SelectionContext
    from ..sources import load_source, load_target

    if not args.pool:
        raise UsageError("--pool is required (one or more source directories)")
    pool = [load_source(p, split=args.pool_split) for p in args.pool]
    total = sum(len(s) for s in pool)
    budget = args.budget if args.budget is not None else max(1, round(args.ratio * total))
    mixture = Mixture(pool, budget=budget, seed=args.seed)
    if args.method in FEATURE_METHODS:
        if not config.model_path or not args.targets:
            raise UsageError(f"--method {args.method}: --model and --targets are required")
        targets = {}
        for path in args.targets:
            src = load_target(path, args.target_split)
            if src.name in targets:
                raise UsageError(f"two targets are named {src.name!r}; give them distinct folders")
            targets[src.name] = src.dataset
        if config.work_dir is None:
            config = replace(config, work_dir=os.path.join(args.out, "work"))
        selector = make_selector(args.method, config=config)
        context = SelectionContext(mixture=mixture, seed=args.seed, targets=targets, model_id=config.model_path)
    else:
        selector = make_selector(args.method)
        context = SelectionContext(mixture=mixture, seed=args.seed)
    plan = selector.select(context)
    paths: list[str] = []
    if is_main_process():
        paths.append(plan.save(args.out))
        if args.method in FEATURE_METHODS:
            paths += selector.result.save(args.out, plots=getattr(config, "plots", True))
    return {"plan": plan, "selector": selector, "paths": paths, "total": total}


def run(args: SelectArguments, config: Any) -> int:
    from ..distributed import is_main_process

    out = select(args, config)
    if not is_main_process():
        return 0
    plan = out["plan"]
    if args.method == "cadc":
        for k, stage in enumerate(plan.extra["stages"]):
            members = ", ".join(plan.extra["capabilities"][stage["capability"]])
            print(f"stage {k}\t{stage['capability']}\t{stage['rows']}\t{members}")
    for name, sp in plan.sources.items():
        print(f"{name}\t{sp.count}\t{sp.weight:.4f}")
    names = ", ".join(os.path.basename(p) for p in out["paths"])
    print(f"selected {plan.budget} of {out['total']} rows; wrote {names} to {args.out}")
    return 0
