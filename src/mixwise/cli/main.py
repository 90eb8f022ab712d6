"""`mixwise <command>`: the command table and the entry point (`mixwise.cli:main`)."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass


class UsageError(ValueError):
    """A command was called with missing or contradictory arguments: printed as `mixwise CMD: message`, exit 2."""


@dataclass(frozen=True)
class Command:
    """A command: its module under `mixwise.cli` defines `parse(argv, prog, description) -> tuple` (the parsed
    argument dataclasses) and `run(*parsed) -> int`."""

    name: str
    module: str
    help: str
    positional: str | None = None  # an argument field that may be given as the first bare argument

    def load(self):
        return importlib.import_module(f"mixwise.cli.{self.module}")


COMMANDS = {
    c.name: c
    for c in [
        Command(
            "demo", "demo", "Plan a toy-world mixture and train the tiny LLaVA on it with TRL (about 2 min on CPU)."
        ),
        Command("toy", "toy", "Write the toy world's sources to disk, one folder per source."),
        Command(
            "toy-base", "toy_base", "Build (once; then from the cache) the pre-trained toy base and print its path."
        ),
        Command("allocate", "allocate", "Turn per-source weights into an exact plan under a budget."),
        Command(
            "score",
            "score",
            "DataProphet: score sources for targets (metric.csv, terms, heatmap) and allocate a budget.",
        ),
        Command(
            "eval-tau",
            "eval_tau",
            "Kendall tau (per target, per source, headline) between a predicted metric and measured transfer.",
        ),
        Command(
            "select",
            "select",
            "Per-sample selection for the targets (ICONS: warm-up, gradient features, influence, vote).",
        ),
        Command(
            "generate",
            "generate",
            "MM-GEN: partition a target into subgroups, generate targeted Q/A pairs with a VLM, filter them.",
        ),
        Command("sft", "sft", "SFT with TRL's SFTTrainer on a selected mixture (a recipe: --config NAME.yaml)."),
        Command("grpo", "grpo", "GRPO with TRL's GRPOTrainer, the prompt budget allocated by the selector."),
        Command("recipes", "recipes", "List the shipped recipes; `recipes copy NAME` copies one out to edit."),
        Command(
            "export",
            "export",
            "Write a plan's rows as a DatasetDict + dataset card + a TRL YAML that trains exactly them.",
            "plan",
        ),
        Command("report", "report", "Build a report page from one or more runs (side by side)."),
    ]
}


def parse_with(dataclass_types: Sequence[type], argv: Sequence[str], prog: str, description: str) -> tuple:
    """TRL's parser over `dataclass_types`: a `--config` YAML file first, then command-line overrides."""
    from trl import TrlParser

    parser = TrlParser(dataclass_types=list(dataclass_types), prog=prog, description=description)
    return tuple(parser.parse_args_and_config(list(argv)))


def usage() -> str:
    lines = ["usage: mixwise <command> [--config FILE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {c.name:<10} {c.help}" for c in COMMANDS.values()]
    lines += ["", "`mixwise <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from .. import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mixwise: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    command = COMMANDS[name]
    if command.positional and rest and not rest[0].startswith("-"):
        rest = [f"--{command.positional}", rest[0], *rest[1:]]
    module = command.load()
    try:
        parsed = module.parse(rest, prog=f"mixwise {name}", description=command.help)
        return int(module.run(*parsed) or 0)
    except UsageError as err:
        print(f"mixwise {name}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
