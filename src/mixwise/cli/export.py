"""`mixwise export PLAN_OR_RUN --sources DIR ... --out DIR`: the plan's rows as a DatasetDict, a dataset card and a
TRL YAML that trains exactly those rows (`trl sft --config DIR/trl_sft.yaml`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .main import UsageError, parse_with


@dataclass
class ExportArguments:
    """`mixwise export PLAN_OR_RUN --sources DIR ... --out DIR`: write exactly the plan's rows for any trainer."""

    plan: str | None = field(
        default=None, metadata={"help": "A selection.json, or a run / selection directory holding one."}
    )
    sources: list[str] | None = field(
        default=None,
        metadata={"help": "The plan's sources: save_to_disk folders (name=path to rename) or hub ids."},
    )
    split: str = field(default="train", metadata={"help": "Split of DatasetDict sources."})
    out: str = field(default="mixwise-export", metadata={"help": "The export directory."})
    model: str | None = field(
        default=None, metadata={"help": "model_name_or_path of the TRL YAML (default: the plan's local model)."}
    )
    output_dir: str | None = field(default=None, metadata={"help": "output_dir of the TRL YAML (default: OUT-sft)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace an existing export."})


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([ExportArguments], argv, prog, description)


def run(args: ExportArguments) -> int:
    from ..export import export_plan
    from ..sources import load_source

    if not args.plan:
        raise UsageError("give the plan: a selection.json or a run directory (mixwise export RUN --sources ...)")
    if not args.sources:
        raise UsageError("--sources is required: the plan's source folders (the plan records names, not paths)")
    sources = [load_source(p, split=args.split) for p in args.sources]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise UsageError(f"two sources have the same name: {names}; rename with name=path")
    try:
        result = export_plan(args.plan, sources, args.out, model=args.model, output_dir=args.output_dir,
                             overwrite=args.overwrite)  # fmt: skip
    except (FileNotFoundError, FileExistsError) as err:
        raise UsageError(str(err)) from None
    counts = ", ".join(f"{n} {c}" for n, c in result.counts.items())
    command = "trl sft" if result.format == "sft" else "trl grpo"
    print(f"exported {len(result.dataset)} rows ({counts}) to {result.out}")
    print(f"train on exactly them: {command} --config {result.paths['trl']}")
    return 0
