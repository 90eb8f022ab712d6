"""`mixwise demo`: the whole loop on the embedded default — tiny LLaVA + toy world — in about two minutes on CPU.

1. build the tiny LLaVA (random weights) and save it, so that it is loaded by path as a user's model would be;
2. make the toy world's sources (the pool);
3. plan the mixture under the budget with a selector (default: DataProphet, scoring every toy source for every toy
   family's test split with the live model), inside the trainer, through `SelectionCallback`;
4. train LoRA with TRL's `SFTTrainer` on exactly that mixture;
5. write `selection.json`, the adapter and a short `report.md` into the output directory.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .main import parse_with

DEMO_TARGET_ROWS = 16  # rows of each toy family's test split used as DataProphet targets


@dataclass
class DemoArguments:
    """`mixwise demo`: plan a mixture of the toy world and train the tiny LLaVA on it with TRL's SFTTrainer."""

    out: str = field(default="mixwise-demo", metadata={"help": "Output directory."})
    selector: str = field(default="dataprophet", metadata={"help": "Selector: dataprophet, uniform, random."})
    n_train: int = field(default=32, metadata={"help": "Training rows per toy source."})
    budget: int = field(default=64, metadata={"help": "Rows the run trains on (one epoch)."})
    families: list[str] | None = field(default=None, metadata={"help": "Toy families to use (default: all)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs over the budget."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate (LoRA)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    seed: int = field(default=0, metadata={"help": "Seed of everything: model init, data, plan, order."})


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([DemoArguments], argv, prog, description)


def run(args: DemoArguments) -> int:
    result = run_demo(args)
    print(f"mixwise demo: wrote {result['out']} (selection.json, model/, report.md) in {result['seconds']:.0f}s")
    return 0


def demo_selector(name: str, seed: int = 0, n_train: int = 64):
    from ..registry import make_selector

    if name == "fixed_weights":
        raise ValueError("the demo cannot take fixed weights; use `mixwise allocate` for those")
    if name == "dataprophet":
        # a small subsample keeps the demo fast; k-means needs more rows than clusters, so tiny pools get fewer
        return make_selector(name, subsample=64, seed=seed, n_clusters=max(2, min(10, n_train - 1)))
    return make_selector(name)


def run_demo(cfg: DemoArguments) -> dict[str, Any]:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = time.time()
    from peft import LoraConfig
    from tqdm.auto import tqdm
    from trl import SFTConfig, SFTTrainer

    from ..consumption import record_consumption
    from ..mixture import Mixture
    from ..models import load_model
    from ..testing import save_tiny_model
    from ..toy import FAMILIES, make_source
    from ..trainer import attach

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    families = list(cfg.families or FAMILIES)
    steps = tqdm(total=4, desc="mixwise demo", unit="stage")

    steps.set_postfix_str("building the tiny LLaVA")
    model_dir = save_tiny_model("llava", out / "base_model", seed=cfg.seed)
    steps.update()

    steps.set_postfix_str("making the toy world")
    pool = {f: make_source(f, cfg.n_train, split="train", seed=cfg.seed) for f in families}
    mixture = Mixture(pool, budget=cfg.budget, seed=cfg.seed)
    targets = {f: make_source(f, DEMO_TARGET_ROWS, split="test", seed=cfg.seed) for f in families}
    steps.update()

    steps.set_postfix_str("training")
    model, processor = load_model(model_dir)
    args = SFTConfig(
        output_dir=str(out / "run"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        seed=cfg.seed,
        max_length=None,
        disable_tqdm=False,
        remove_unused_columns=False,  # keep `source` so the report can count what was consumed
    )
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=2 * cfg.lora_r,
        target_modules=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=mixture.dataset, processing_class=processor, peft_config=lora
    )
    attach(
        trainer,
        mixture,
        selector=demo_selector(cfg.selector, cfg.seed, cfg.n_train),
        targets=targets,
        model_id=str(model_dir),
    )
    consumed = record_consumption(trainer).counts
    result = trainer.train()
    steps.update()

    steps.set_postfix_str("writing results")
    trainer.save_model(str(out / "model"))
    plan = mixture.plan
    plan.save(out)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    report = _report(plan, consumed, losses, result.metrics, time.time() - start)
    (out / "report.md").write_text(report)
    steps.update()
    steps.close()
    return {
        "out": str(out),
        "plan": plan,
        "consumed": dict(consumed),
        "losses": losses,
        "seconds": time.time() - start,
    }


def _report(plan, consumed, losses, metrics, seconds) -> str:
    lines = [
        "# mixwise demo",
        "",
        f"Method: **{plan.method}**, budget {plan.budget} rows, seed {plan.seed}, mixwise {plan.version}.",
        "",
        "| source | weight | planned rows | consumed rows | source size |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, sp in plan.sources.items():
        lines.append(f"| {name} | {sp.weight:.3f} | {sp.count} | {consumed.get(name, 0)} | {sp.size} |")
    metric = plan.extra.get("metric") if plan.extra else None
    if metric:  # a preformatted block (the table above is the one per-source table of the report)
        targets = list(next(iter(metric.values())))
        lines += ["", "DataProphet metric M(source → target) (rows: training sources; columns: toy test splits):", ""]
        lines += ["```", f"{'source':<10}" + "".join(f"{t:>10}" for t in targets)]
        lines += [f"{s:<10}" + "".join(f"{metric[s][t]:>10.4f}" for t in targets) for s in metric]
        lines += ["```"]
    if losses:
        lines += ["", f"Training loss: first {losses[0]:.3f}, last {losses[-1]:.3f} over {len(losses)} steps."]
    lines += ["", f"Trainer metrics: `{json.dumps({k: round(v, 4) for k, v in metrics.items()})}`"]
    lines += ["", f"Wall time: {seconds:.0f}s."]
    return "\n".join(lines) + "\n"
