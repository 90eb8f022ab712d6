"""`mixwise report RUN_DIR`: one self-contained HTML page describing a run."""

from __future__ import annotations

from dataclasses import dataclass, field

from .main import parse_with


@dataclass
class ReportArguments:
    """`mixwise report RUN_DIR`: one self-contained HTML page from a run's selection.json, signals and logs."""

    run_dir: str = field(default=".", metadata={"help": "The run's output directory (holds selection.json)."})
    out: str | None = field(default=None, metadata={"help": "Where to write the page (default RUN_DIR/report.html)."})


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([ReportArguments], argv, prog, description)


def run(args: ReportArguments) -> int:
    from ..report import build_report

    print(f"wrote {build_report(args.run_dir, args.out)}")
    return 0
