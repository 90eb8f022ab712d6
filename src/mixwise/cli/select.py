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


@dataclass
class RowSelectConfig:
    """The settings of the row methods (`random`, `uniform`): how bad rows are handled."""

    on_error: str = field(
        default="raise", metadata={"help": "Bad rows: raise (naming them) or skip (counted in selection.json)."}
    )


def method_config_class(method: str) -> type:
    if method == "icons":
        from ..icons import ICONSConfig

        return ICONSConfig
    if method == "cadc":
        from ..cadc import CADCConfig

        return CADCConfig
    if method in ROW_METHODS:
        return RowSelectConfig
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
    return parse_with([SelectArguments, method_config_class(method)], argv, prog, description)


def resolve_budget(args: SelectArguments, total: int) -> int:
    """`--budget` rows, else `--ratio` of the pool's `total` rows; a ratio outside (0, 1] or a budget that is not a
    positive whole number is a usage error."""
    from ..plan import check_budget

    if args.budget is not None:
        try:
            return check_budget(args.budget, "--budget")
        except ValueError as err:
            raise UsageError(str(err)) from None
    if not isinstance(args.ratio, int | float) or not 0 < args.ratio <= 1:
        raise UsageError(f"--ratio must be in (0, 1] (the share of the pool to select), got {args.ratio!r}")
    return max(1, round(args.ratio * total))


def select(args: SelectArguments, config: Any) -> dict[str, Any]:
    """Run the selection; returns `{"plan", "selector", "paths", "total"}` (files are written by the main process)."""
    from ..distributed import is_main_process
    from ..mixture import Mixture
    from ..models import load_processing_class
    from ..registry import make_selector
    from ..selectors import SelectionContext
    from ..sources import load_sources
    from ..validation import validate_source

    if not args.pool:
        raise UsageError("--pool is required (one or more source directories)")
    on_error = getattr(config, "on_error", "raise")
    try:
        pool = load_sources(args.pool, split=args.pool_split)
        target_sources = load_sources(args.targets or [], split=args.target_split, role="target")
    except ValueError as err:
        raise UsageError(str(err)) from None
    total = sum(len(s) for s in pool)
    budget = resolve_budget(args, total)
    feature = args.method in FEATURE_METHODS
    if feature and (not config.model_path or not args.targets):
        raise UsageError(f"--method {args.method}: --model and --targets are required")
    # Validation before any model is loaded, with the processor the features are computed with.
    processor = load_processing_class(config.model_path) if feature else None
    max_length = getattr(config, "max_length", None)
    mixture = Mixture(
        pool, budget=budget, seed=args.seed, validate=on_error, processing_class=processor, max_length=max_length
    )
    if feature:
        targets = {}
        for src in target_sources:
            src, _ = validate_source(src, on_error=on_error, processing_class=processor, max_length=max_length)
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
