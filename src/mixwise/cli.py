"""The `mixwise` command line. Every command is a dataclass config parsed with TRL's parser, so
`mixwise CMD --config cmd.yaml --some_field value` works for all of them."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .configs import (
    AllocateConfig,
    DemoConfig,
    EvalTauConfig,
    GenerateConfig,
    ReportConfig,
    ScoreConfig,
    SelectConfig,
    ToyConfig,
)


@dataclass
class Command:
    name: str
    help: str
    config: type
    run: Callable
    positional: str | None = None  # a config field that may be given as the first bare argument


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


def _run_score(cfg: ScoreConfig) -> int:
    import os

    from .dataprophet import run_score

    out = run_score(cfg)
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
    print(f"wrote {', '.join(sorted(os.path.basename(p) for p in out['paths'].values()))} to {cfg.out}")
    return 0


def _run_eval_tau(cfg: EvalTauConfig) -> int:
    from .tau import run_eval_tau

    run_eval_tau(cfg)
    if cfg.out:
        print(f"wrote {cfg.out}")
    return 0


def _run_report(cfg: ReportConfig) -> int:
    from .report import build_report

    print(f"wrote {build_report(cfg.run_dir, cfg.out)}")
    return 0


def _run_select(cfg: SelectConfig) -> int:
    import os

    from .icons import ICONS, ICONSConfig
    from .mixture import Mixture
    from .selectors import SELECTORS, SelectionContext
    from .sources import load_source
    from .warmup import WarmupConfig

    if not cfg.pool:
        raise SystemExit("mixwise select: --pool is required (one or more source directories)")
    pool = [load_source(p, split=cfg.pool_split) for p in cfg.pool]
    total = sum(len(s) for s in pool)
    budget = cfg.budget if cfg.budget is not None else max(1, round(cfg.ratio * total))
    mixture = Mixture(pool, budget=budget, seed=cfg.seed)
    if cfg.method in ("icons", "cadc"):
        if not cfg.model or not cfg.targets:
            raise SystemExit(f"mixwise select --method {cfg.method}: --model and --targets are required")
        targets = {}
        for path in cfg.targets:
            split = cfg.target_split
            if split is None:
                import datasets

                ds = datasets.load_from_disk(path)
                split = next((s for s in ("validation", "test") if isinstance(ds, dict) and s in ds), "validation")
            src = load_source(path, split=split, role="target")
            if src.name in targets:
                raise SystemExit(f"mixwise select: two targets are named {src.name!r}; give them distinct folders")
            targets[src.name] = src.dataset
        overrides = {
            k: v
            for k, v in {
                "fraction": cfg.warmup_fraction,
                "r": cfg.lora_r,
                "alpha": cfg.lora_alpha,
                "epochs": cfg.warmup_epochs,
            }.items()
            if v is not None
        }
        preset = cfg.warmup_preset or ("less" if cfg.method == "cadc" else "icons")
        common = dict(  # the warm-up and feature settings ICONS and CADC share
            model_path=cfg.model,
            work_dir=cfg.work_dir or os.path.join(cfg.out, "work"),
            warmup=WarmupConfig.preset(preset, seed=cfg.seed, **overrides),
            warmup_dir=cfg.warmup_dir,
            pool_mode=cfg.pool_mode,
            proj_dim=cfg.proj_dim,
            projector=cfg.projector,
            proj_seed=cfg.seed,
            subtask_column=cfg.subtask_column,
            batch_size=cfg.batch_size,
            max_length=cfg.max_length,
            chunk_size=cfg.chunk_size,
            on_error=cfg.on_error,
        )
        if cfg.method == "cadc":
            from .cadc import CADC, CADCConfig

            selector = CADC(
                CADCConfig(
                    **common,
                    threshold=cfg.cadc_threshold,
                    n_capabilities=cfg.n_capabilities,
                    budget_split=cfg.budget_split,
                    stage_order=cfg.stage_order,
                    community_seed=cfg.seed,
                )
            )
        else:
            selector = ICONS(
                ICONSConfig(
                    **common,
                    checkpoints=cfg.checkpoints,
                    signal=cfg.signal,
                    aggregator=cfg.aggregator,
                    p_vote=cfg.p_vote,
                    specialist_task=cfg.specialist_task,
                    visual_dependency=cfg.visual_dependency,
                )
            )
        context = SelectionContext(mixture=mixture, seed=cfg.seed, targets=targets, model_id=cfg.model)
    elif cfg.method in SELECTORS and cfg.method not in ("fixed_weights", "dataprophet"):
        selector = SELECTORS[cfg.method]()
        context = SelectionContext(mixture=mixture, seed=cfg.seed)
    else:
        raise SystemExit(f"mixwise select: unknown method {cfg.method!r} (icons, cadc, random, uniform)")
    plan = selector.select(context)
    from .distributed import is_main_process

    if not is_main_process():
        return 0
    path = plan.save(cfg.out)
    written = [path]
    if cfg.method in ("icons", "cadc"):
        written += selector.result.save(cfg.out)
    if cfg.method == "cadc":
        for k, stage in enumerate(plan.extra["stages"]):
            members = ", ".join(plan.extra["capabilities"][stage["capability"]])
            print(f"stage {k}\t{stage['capability']}\t{stage['rows']}\t{members}")
    for name, sp in plan.sources.items():
        print(f"{name}\t{sp.count}\t{sp.weight:.4f}")
    names = ", ".join(os.path.basename(p) for p in written)
    print(f"selected {plan.budget} of {total} rows; wrote {names} to {cfg.out}")
    return 0


def _run_generate(cfg: GenerateConfig) -> int:
    from .mmgen import run_mmgen

    result = run_mmgen(cfg)
    summary = result.summary
    print("subgroup\tshare\timages\tpairs_parsed\tpairs_kept")
    for name, g in summary["subgroups"].items():
        print(f"{name}\t{g['share']:.4f}\t{g['images']}\t{g['pairs_parsed']}\t{g['pairs_kept']}")
    rejected = ", ".join(f"{k}: {v}" for k, v in summary["rejected_items"].items()) or "none"
    dropped = ", ".join(f"{k}: {v}" for k, v in (summary["filter"] or {}).items()) or "none"
    print(f"items: {summary['items']}, rejected: {rejected}; pairs parsed: {summary['pairs_parsed']}")
    print(f"filtered out: {dropped}; kept {summary['pairs_kept']} rows in {result.out / 'dataset'}")
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
        Command(
            "score",
            "DataProphet: score sources for targets (metric.csv, terms, heatmap) and allocate a budget.",
            ScoreConfig,
            _run_score,
        ),
        Command(
            "eval-tau",
            "Kendall tau (per target, per source, headline) between a predicted metric and measured transfer.",
            EvalTauConfig,
            _run_eval_tau,
        ),
        Command(
            "report",
            "Build RUN_DIR/report.html from a run's selection.json and trainer logs.",
            ReportConfig,
            _run_report,
            positional="run_dir",
        ),
        Command(
            "select",
            "Per-sample selection for the targets (ICONS: warm-up, gradient features, influence, vote).",
            SelectConfig,
            _run_select,
        ),
        Command(
            "generate",
            "MM-GEN: partition a target into subgroups, generate targeted Q/A pairs with a VLM, filter them.",
            GenerateConfig,
            _run_generate,
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
    if command.positional and rest and not rest[0].startswith("-"):
        rest = [f"--{command.positional}", rest[0], *rest[1:]]
    parser = TrlParser(dataclass_types=[command.config], prog=f"mixwise {name}", description=command.help)
    (cfg,) = parser.parse_args_and_config(rest)
    return command.run(cfg)


if __name__ == "__main__":
    raise SystemExit(main())
