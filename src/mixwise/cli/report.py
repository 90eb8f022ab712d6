"""`mixwise report RUN [RUN ...]`: one self-contained HTML page describing one run, or comparing several."""

from __future__ import annotations

from dataclasses import dataclass, field

from .main import UsageError, parse_with


@dataclass
class ReportArguments:
    """`mixwise report RUN [RUN ...]`: one self-contained page from the runs' selection.json, consumed.json and
    trainer logs, side by side."""

    runs: list[str] | None = field(
        default=None, metadata={"help": "Run output directories (each holds selection.json); several are compared."}
    )
    run_dir: str | None = field(default=None, metadata={"help": "One run directory (same as a single RUN)."})
    names: list[str] | None = field(
        default=None, metadata={"help": "Names of the runs in the page (default: folders)."}
    )
    out: str | None = field(
        default=None,
        metadata={
            "help": "Where to write the page (default: RUN/report.html for one run, ./report.html for several)."
        },
    )


def parse(argv, prog: str, description: str) -> tuple:
    argv = list(argv)
    runs = []
    while argv and not argv[0].startswith("-"):
        runs.append(argv.pop(0))
    if runs:
        argv = ["--runs", *runs, *argv]
    return parse_with([ReportArguments], argv, prog, description)


def run(args: ReportArguments) -> int:
    from ..report import build_report

    runs = list(args.runs or []) + ([args.run_dir] if args.run_dir else [])
    if not runs:
        raise UsageError("give one or more run directories: mixwise report RUN [RUN ...]")
    if args.names and len(args.names) != len(runs):
        raise UsageError(f"{len(args.names)} names for {len(runs)} runs")
    try:
        path = build_report(runs, args.out, names=args.names)
    except (FileNotFoundError, ImportError) as err:  # no run there; matplotlib missing (mixwise[report])
        raise UsageError(str(err)) from None
    print(f"wrote {path}")
    return 0
