"""`mixwise score`: DataProphet's metric M(source → target), its terms and the allocation under a budget.

The command line is [`ScoreArguments`] (what to score, where to write) plus every field of
[`mixwise.dataprophet.DataProphetConfig`] (how to score): `mixwise score --model M --sources A B --targets T
--budget 1000 --subsample 256 --no_ppl --sharpen power --power 4`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from .main import UsageError, parse_with


@dataclass
class ScoreArguments:
    """What `mixwise score` scores and where it writes (the scoring settings are DataProphetConfig's)."""

    model: str = field(default="", metadata={"help": "Base model directory (transformers format)."})
    sources: list[str] | None = field(default=None, metadata={"help": "Source directories (save_to_disk)."})
    targets: list[str] | None = field(default=None, metadata={"help": "Target directories (save_to_disk)."})
    budget: int | None = field(default=None, metadata={"help": "Training rows to allocate across the sources."})
    out: str = field(default="dataprophet-out", metadata={"help": "Output directory (signal cache: OUT/cache)."})
    split: str = field(default="train", metadata={"help": "Split of DatasetDict sources."})
    target_split: str | None = field(
        default=None, metadata={"help": "Split of DatasetDict targets (default: validation, else test)."}
    )
    device: str | None = field(default=None, metadata={"help": "Device (default: cuda if available, else cpu)."})


def parse(argv, prog: str, description: str) -> tuple:
    from ..dataprophet import DataProphetConfig

    return parse_with([ScoreArguments, DataProphetConfig], argv, prog, description)


def score(args: ScoreArguments, config: Any) -> dict[str, Any]:
    """Score, plan and write `metric.csv`, `term_<factor>.csv` (M is their cell-wise product), `signals.csv`,
    `weights.csv`, `selection.json`, `heatmap.png` and — only when TRL's `fraction`s train on exactly this plan (whole
    sources) — `mixture.yaml` (TRL's `datasets:` mixture) into `args.out`. Returns `{"result", "plan", "paths",
    "inexact"}` (`inexact`: why fractions cannot express the plan; `mixwise export` writes its rows instead)."""
    import yaml

    from ..dataprophet import DataProphet
    from ..fingerprint import model_dir_id
    from ..models import default_device, load_model, load_processing_class
    from ..plan import check_budget
    from ..sources import load_sources
    from ..validation import validate_source

    if not args.model or not args.sources or not args.targets:
        raise UsageError("--model, --sources, --targets and a positive --budget are required")
    if args.budget is None:
        raise UsageError("--budget is required: the number of training rows to allocate (a positive whole number)")
    try:
        budget = check_budget(args.budget, "--budget")
        sources = load_sources(args.sources, split=args.split, role="pool")
        targets = load_sources(args.targets, split=args.target_split, role="target")
    except ValueError as err:
        raise UsageError(str(err)) from None
    empty = [s.name for s in sources + targets if len(s) == 0]
    if empty:
        raise UsageError(f"{empty} have 0 rows: there is nothing to score in them; leave them out")
    # Every row checked before the model is loaded, with the processor it is scored with. With on_error="skip" the
    # bad rows are dropped here: they are in selection.json["skipped"], and the plan never draws them (its sizes are
    # the kept rows', as the training Mixture's are with validate="skip").
    processor = load_processing_class(args.model)
    skipped = {}
    for group in (sources, targets):
        for k, src in enumerate(group):
            group[k], report = validate_source(
                src, on_error=config.on_error, processing_class=processor, max_length=config.max_length
            )
            if (report.skipped or report.converted) and src.role == "pool":
                skipped[src.name] = report.to_dict()
    if config.cache_dir is None:
        from dataclasses import replace

        config = replace(config, cache_dir=os.path.join(args.out, "cache"))
    model, processor = load_model(args.model, device=args.device or default_device())
    model_id = model_dir_id(args.model)
    selector = DataProphet(config)
    result = selector.score(sources, targets, model, processor, model_id=model_id)
    sizes = {s.name: len(s) for s in sources}
    fingerprints = {
        "data": {s.name: s.fingerprint for s in sources},
        "targets": {t.name: t.fingerprint for t in targets},
        "model": model_id,
    }
    plan = result.to_plan(
        sizes, budget, seed=config.seed, config=selector.config(), fingerprints=fingerprints, skipped=skipped
    )
    os.makedirs(args.out, exist_ok=True)
    paths = result.save(args.out)
    paths["selection"] = plan.save(args.out)
    try:  # TRL fractions only when they train on exactly this plan; otherwise `mixwise export` writes its rows
        entries = plan.to_trl_mixture({s.name: os.path.abspath(p) for s, p in zip(sources, args.sources)})
    except ValueError as err:
        entries, inexact = None, str(err)
    else:
        inexact = None
    if entries is not None:
        paths["mixture"] = os.path.join(args.out, "mixture.yaml")
        with open(paths["mixture"], "w") as f:
            yaml.safe_dump({"datasets": entries}, f, sort_keys=False)
    return {"result": result, "plan": plan, "paths": paths, "inexact": inexact}


def run(args: ScoreArguments, config: Any) -> int:
    out = score(args, config)
    result, plan = out["result"], out["plan"]
    print(f"DataProphet M(source -> target), terms on: {', '.join(result.terms.enabled())}")
    metric = result.metric()
    print("\t".join(["source", *metric.cols]))
    for s, row in zip(metric.rows, metric.values):
        print("\t".join([s, *(f"{v:.4f}" for v in row)]))
    print("allocation:")
    for name, sp in plan.sources.items():
        flag = "  (repeats rows)" if sp.repeated else ""
        print(f"  {name}\t{sp.count}\t{sp.weight:.4f}{flag}")
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in out['paths'].values()))} to {args.out}")
    if out["inexact"]:
        print(f"no mixture.yaml: {out['inexact']}")
        print(f"  mixwise export {args.out} --sources {' '.join(args.sources)} --out {args.out}/export")
    return 0
