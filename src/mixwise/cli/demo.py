"""`mixwise demo`: does choosing help? A selected and a baseline mixture of the same budget, side by side.

On the pre-trained toy base ([`mixwise.toybase`], built once and cached; about 1.5 minutes the first time), for one
target family of the toy world:

1. make the pool: every toy family (`n_train` rows each) plus a planted source unrelated to every target (textures
   with weather questions);
2. train the base twice with TRL's `SFTTrainer` (full fine-tuning, the same arguments and seed, loss on the answer
   tokens as in the base's pre-training), each time on a
   mixture of `budget` rows drawn through the mixture sampler: once planned by the selector (default: DataProphet,
   scoring every source against the target's validation rows with the live model, inside the trainer through
   `SelectionCallback`), once by the baseline (`uniform` per source, or `random` rows);
3. measure greedy exact match on the target's test split for both (and the base), and print them side by side;
4. write `selection.json` (the selected plan and its manifest), `report.md` (both allocations, planned vs consumed
   rows, losses, accuracies) and the selected run's model into the output directory.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .main import UsageError, parse_with

UNRELATED = "unrelated"


@dataclass
class DemoArguments:
    """`mixwise demo`: a selected and a baseline mixture of the same budget, trained on the toy base, compared."""

    out: str = field(default="mixwise-demo", metadata={"help": "Output directory."})
    target: str = field(default="spatial", metadata={"help": "The toy family to improve (the target)."})
    selector: str = field(default="dataprophet", metadata={"help": "Selector of the selected run: dataprophet."})
    baseline: str = field(default="uniform", metadata={"help": "Selector of the baseline run: uniform or random."})
    n_train: int = field(default=64, metadata={"help": "Pool rows per source."})
    budget: int = field(default=64, metadata={"help": "Rows each run trains on (one epoch)."})
    target_rows: int = field(default=32, metadata={"help": "Validation rows of the target the selector scores."})
    test_rows: int = field(default=150, metadata={"help": "Test rows of the target the accuracies are measured on."})
    epochs: float = field(default=4.0, metadata={"help": "Training epochs over the budget."})
    batch_size: int = field(default=16, metadata={"help": "Per-device batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate (full fine-tuning)."})
    seed: int = field(default=0, metadata={"help": "Seed of the data, the plans and the training order."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Toy base cache (default: $MIXWISE_CACHE, else ~/.cache/mixwise)."}
    )
    base: str | None = field(
        default=None,
        metadata={"help": "JSON overrides of the toy base's config (`mixwise toy-base --help`), e.g. a smaller base."},
    )


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([DemoArguments], argv, prog, description)


def run(args: DemoArguments) -> int:
    result = run_demo(args)
    acc = result["accuracy"]
    width = max(len(args.selector), len(args.baseline))
    print(
        f"\nmixwise demo: target '{args.target}', budget {args.budget} rows, exact match on {args.test_rows} test rows"
    )
    width = max(width, len("base (no fine-tuning)"))
    print(f"  {'base (no fine-tuning)':<{width}}  {acc['base']:.3f}")
    print(f"  {args.baseline:<{width}}  {acc['baseline']:.3f}")
    print(f"  {args.selector:<{width}}  {acc['selected']:.3f}  ({acc['selected'] - acc['baseline']:+.3f})")
    print(f"wrote {result['out']} (selection.json, model/, report.md) in {result['seconds']:.0f}s")
    return 0


def demo_selector(name: str, seed: int = 0, n_train: int = 64):
    from ..registry import make_selector

    if name == "fixed_weights":
        raise ValueError("the demo cannot take fixed weights; use `mixwise allocate` for those")
    if name == "dataprophet":
        # a small subsample keeps the demo fast; k-means needs more rows than clusters, so tiny pools get fewer
        return make_selector(name, subsample=64, seed=seed, n_clusters=max(2, min(10, n_train - 1)))
    return make_selector(name)  # uniform, random (seeded by the mixture's seed)


def run_demo(cfg: DemoArguments) -> dict[str, Any]:
    from tqdm.auto import tqdm

    from ..toy import FAMILIES, make_source, make_unrelated
    from ..toybase import EncodedRows, ToyBaseConfig, build_toy_base, exact_match

    try:
        base_config = ToyBaseConfig(**json.loads(cfg.base)) if cfg.base else ToyBaseConfig()
    except (TypeError, ValueError) as err:  # not JSON, an unknown setting, or a refused value
        raise UsageError(f"--base must be a JSON object of toy base settings: {err}") from None

    if cfg.target not in FAMILIES:
        raise UsageError(f"unknown target family {cfg.target!r}; valid families are {list(FAMILIES)}")
    if cfg.baseline not in ("uniform", "random"):
        raise UsageError(f"baseline must be 'uniform' or 'random', got {cfg.baseline!r}")
    start = time.time()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = tqdm(total=5, desc="mixwise demo", unit="stage")

    steps.set_postfix_str("the toy base (cached after the first run)")
    base = build_toy_base(base_config, cfg.cache_dir)
    steps.update()

    steps.set_postfix_str("making the pool")
    pool = {f: make_source(f, cfg.n_train, "train", seed=cfg.seed) for f in FAMILIES}
    pool[UNRELATED] = make_unrelated(cfg.n_train, "train", seed=cfg.seed)
    targets = {cfg.target: make_source(cfg.target, cfg.target_rows, "validation", seed=cfg.seed)}
    test_rows = list(make_source(cfg.target, cfg.test_rows, "test", seed=cfg.seed))
    steps.update()

    runs = {}
    for role, name in (("selected", cfg.selector), ("baseline", cfg.baseline)):
        steps.set_postfix_str(f"training on the {name} mixture")
        runs[role] = _train(cfg, base, pool, targets, name, out / role)
        steps.update()

    steps.set_postfix_str("measuring")
    from ..models import load_model

    base_model, base_processor = load_model(base)
    accuracy = {"base": float(exact_match(base_model.eval(), EncodedRows(test_rows, base_processor)).mean())}
    for role, run in runs.items():
        accuracy[role] = float(exact_match(run["model"], EncodedRows(test_rows, run["processor"])).mean())
    runs["selected"]["trainer"].save_model(str(out / "model"))
    plan = runs["selected"]["plan"]
    plan.save(out)
    seconds = time.time() - start
    (out / "report.md").write_text(_report(cfg, runs, accuracy, seconds))
    steps.update()
    steps.close()
    return {
        "out": str(out),
        "plan": plan,
        "baseline_plan": runs["baseline"]["plan"],
        "consumed": runs["selected"]["consumed"],
        "losses": runs["selected"]["losses"],
        "accuracy": accuracy,
        "seconds": seconds,
    }


class AnswerOnlyCollator:
    """Batches rows with the loss on the answer tokens only, as the toy base was pre-trained
    ([`mixwise.toybase.EncodedRows`]); TRL's default collator would put the loss on the questions too, which the base
    never learned to predict, and the first steps would undo its pre-training."""

    def __init__(self, processing_class: Any):
        self.processing_class = processing_class

    def __call__(self, examples: list[dict]) -> dict:
        from ..toybase import EncodedRows

        return EncodedRows(examples, self.processing_class).batch(range(len(examples)))


def _train(cfg: DemoArguments, base: Path, pool: dict, targets: dict, selector: str, run_dir: Path) -> dict:
    """One SFTTrainer run of the base on a `budget`-row mixture planned by `selector` in the trainer's callback."""
    from trl import SFTConfig, SFTTrainer

    from ..consumption import record_consumption
    from ..mixture import Mixture
    from ..models import load_model
    from ..toybase import one_thread
    from ..trainer import attach

    model, processor = load_model(base)
    mixture = Mixture(pool, budget=cfg.budget, seed=cfg.seed)
    args = SFTConfig(
        output_dir=str(run_dir),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=cfg.seed,
        data_seed=cfg.seed,
        max_length=None,
        disable_tqdm=True,
        remove_unused_columns=False,  # keep `source`, so that what was consumed is counted
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=mixture.dataset,
        processing_class=processor,
        data_collator=AnswerOnlyCollator(processor),
    )
    attach(trainer, mixture, selector=demo_selector(selector, cfg.seed, cfg.n_train), targets=targets,
           model_id=str(base))  # fmt: skip
    consumed = record_consumption(trainer).counts
    with one_thread():  # tiny models train fastest, and deterministically, on one thread
        trainer.train()
    model.eval()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "model": model,
        "processor": processor,
        "trainer": trainer,
        "plan": mixture.plan,
        "consumed": dict(consumed),
        "losses": losses,
    }


def _report(cfg: DemoArguments, runs: dict, accuracy: dict, seconds: float) -> str:
    selected, baseline = runs["selected"], runs["baseline"]
    lines = [
        "# mixwise demo",
        "",
        f"Target **{cfg.target}**; budget {cfg.budget} rows per run, the same training for both (SFTTrainer, full "
        f"fine-tuning of the toy base, {cfg.epochs:g} epochs, lr {cfg.learning_rate:g}, seed {cfg.seed}).",
        "",
        f"| run | selector | exact match on {cfg.test_rows} test rows of {cfg.target} |",
        "|---|---|---:|",
        f"| base (no fine-tuning) | — | {accuracy['base']:.3f} |",
        f"| baseline | {cfg.baseline} | {accuracy['baseline']:.3f} |",
        f"| selected | {cfg.selector} | **{accuracy['selected']:.3f}** |",
        "",
        f"Selected plan: method **{selected['plan'].method}**, mixwise {selected['plan'].version}.",
        "",
        "| source | weight | planned rows | consumed rows | source size | baseline planned | baseline consumed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, sp in selected["plan"].sources.items():
        bp = baseline["plan"].sources[name]
        lines.append(
            f"| {name} | {sp.weight:.3f} | {sp.count} | {selected['consumed'].get(name, 0)} | {sp.size} | "
            f"{bp.count} | {baseline['consumed'].get(name, 0)} |"
        )
    for role, run in runs.items():
        if run["losses"]:
            losses = run["losses"]
            lines += [
                "",
                f"Training loss ({role}): first {losses[0]:.3f}, last {losses[-1]:.3f}, {len(losses)} steps.",
            ]
    lines += ["", f"Wall time: {seconds:.0f}s."]
    return "\n".join(lines) + "\n"


__all__ = ["DemoArguments", "demo_selector", "parse", "run", "run_demo"]
