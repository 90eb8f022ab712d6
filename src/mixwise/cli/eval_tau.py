"""`mixwise eval-tau --predicted metric.csv --measured delta.csv`: Kendall tau per target, per source, headline."""

from __future__ import annotations

from dataclasses import dataclass, field

from .main import UsageError, parse_with


@dataclass
class EvalTauArguments:
    """`mixwise eval-tau`: Kendall tau between a predicted metric and a measured transfer matrix."""

    predicted: str = field(default="", metadata={"help": "CSV of the predicted metric (rows sources, cols targets)."})
    measured: str = field(default="", metadata={"help": "CSV of the measured transfer Δ (same rows and columns)."})
    variant: str = field(default="b", metadata={"help": "Kendall tau variant: a, b (default, ties) or c."})
    exclude_diagonal: bool = field(
        default=False, metadata={"help": "Leave out the cell where source and target share a name."}
    )
    out: str = field(default="tau.json", metadata={"help": "Where to write the taus as JSON."})


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([EvalTauArguments], argv, prog, description)


def run(args: EvalTauArguments) -> int:
    from ..dataprophet.tau import Matrix, evaluate_tau

    if not args.predicted or not args.measured:
        raise UsageError("--predicted and --measured are required")
    report = evaluate_tau(
        Matrix.from_csv(args.predicted),
        Matrix.from_csv(args.measured),
        variant=args.variant,
        exclude_diagonal=args.exclude_diagonal,
    )
    print(report.format())
    if args.out:
        report.save(args.out)
        print(f"wrote {args.out}")
    return 0
