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
    from ..models import default_device, load_model
    from ..sources import load_source, load_target

    if not args.model or not args.sources or not args.targets or not args.budget or args.budget <= 0:
        raise UsageError("--model, --sources, --targets and a positive --budget are required")
    sources = [load_source(p, split=args.split) for p in args.sources]
    targets = [load_target(p, args.target_split) for p in args.targets]
    for role, group in (("source", sources), ("target", targets)):
        names = [s.name for s in group]
        if len(set(names)) != len(names):
            raise UsageError(f"two {role} directories have the same name: {names}")
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
    plan = result.to_plan(sizes, args.budget, seed=config.seed, config=selector.config(), fingerprints=fingerprints)
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
