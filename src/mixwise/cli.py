"""The `mixwise` command line. Every command is a dataclass config parsed with TRL's parser, so
`mixwise CMD --config cmd.yaml --some_field value` works for all of them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .configs import AllocateConfig, DemoConfig, ToyConfig


@dataclass
class Command:
    name: str
    help: str
    config: type
    run: Callable


def _run_demo(cfg: DemoConfig) -> int:
    from .demo import run_demo

    result = run_demo(cfg)
    print(f"mixwise demo: wrote {result['out']} (selection.json, model/, report.md) in {result['seconds']:.0f}s")
    return 0


def _run_toy(cfg: ToyConfig) -> int:
    from .toy import save_world

    paths = save_world(
        cfg.out,
        n_train=cfg.n_train,
        n_test=cfg.n_test,
        seed=cfg.seed,
        fmt=cfg.fmt,
        families=cfg.families,
        image_size=cfg.image_size,
    )
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0


def _run_allocate(cfg: AllocateConfig) -> int:
    from .plan import Plan
    from .sources import load_source

    if not cfg.weights or cfg.budget is None:
        raise SystemExit("mixwise allocate: --weights and --budget are required")
    with open(cfg.weights) as f:
        weights = json.load(f)
    if isinstance(weights, dict) and "sources" in weights and "method" in weights:  # a selection.json
        weights = {n: s["weight"] for n, s in weights["sources"].items()}
    if cfg.sources:
        sizes = {}
        for path in cfg.sources:
            src = load_source(path, split=cfg.split)
            sizes[src.name] = len(src)
    elif cfg.sizes:
        with open(cfg.sizes) as f:
            sizes = json.load(f)
    else:
        # no sizes: every source is taken to be large enough (counts never exceed the source)
        sizes = {n: int(cfg.budget) for n in weights}
    plan = Plan.from_weights(weights, sizes, cfg.budget, method="fixed_weights", seed=cfg.seed)
    path = plan.save(cfg.out)
    for name, sp in plan.sources.items():
        flag = "  (repeats rows)" if sp.repeated else ""
        print(f"{name}\t{sp.count}\t{sp.weight:.4f}{flag}")
    print(f"wrote {path}")
    return 0


COMMANDS = {
    c.name: c
    for c in [
        Command(
            "demo",
            "Plan a toy-world mixture and train the tiny LLaVA on it with TRL (about 2 min on CPU).",
            DemoConfig,
            _run_demo,
        ),
        Command("toy", "Write the toy world's sources to disk, one folder per source.", ToyConfig, _run_toy),
        Command(
            "allocate", "Turn per-source weights into an exact plan under a budget.", AllocateConfig, _run_allocate
        ),
    ]
}


def _usage() -> str:
    lines = ["usage: mixwise <command> [--config FILE.yaml] [--field value ...]", "", "commands:"]
    lines += [f"  {c.name:<10} {c.help}" for c in COMMANDS.values()]
    lines += ["", "`mixwise <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"mixwise: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from trl import TrlParser

    command = COMMANDS[name]
    parser = TrlParser(dataclass_types=[command.config], prog=f"mixwise {name}", description=command.help)
    (cfg,) = parser.parse_args_and_config(rest)
    return command.run(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
