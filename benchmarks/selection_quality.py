"""Selection quality on the toy world: same budget, same seed, different selections — which trains best?

SFT arms (each fine-tunes the same pre-trained base on its rows, same epochs and learning rate):
  full pool · random 20% · ICONS 20% (warm-up LoRA, gradient features, vote) · ICONS 20% with the round-robin
  aggregator (same features) · DataProphet 20% proportional (Alg. 1) · DataProphet 20% sharpened
  (`sharpen="power"`).
Per-target exact-match accuracy (greedy generation) on every family's test split, and Rel. = mean over targets of
accuracy / full-pool accuracy (ICONS's definition; paper at 20%: ICONS 98.6%, random 95.8%).

GRPO arms (`--grpo`): TRL's GRPOTrainer from the full-pool SFT model on a prompt budget (24 per family) allocated
uniformly or by DataProphet, exact-match reward; mean test accuracy per target after training (paper: 0.583 → 0.595).

The base is the transfer benchmark's LLaVA, pre-trained briefly on all families (default 100 rows x 2 epochs per
family): it has learned the answer format but not the tasks, so the fine-tuning data matters. The pool is 200 rows
per family, fine-tuned for 3 epochs; 20% = 280 rows.

Repeated over `--seeds`; prints mean ± std and writes `results.json` / `results.md` under `--out`.

    python benchmarks/selection_quality.py [--small] [--seeds 0 1 2] [--grpo] [--out DIR]

The base model and the training/evaluation helpers are those of `benchmarks/transfer_tau.py`.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("transfer_tau", HERE / "transfer_tau.py")
tt = importlib.util.module_from_spec(_spec)
sys.modules["transfer_tau"] = tt
_spec.loader.exec_module(tt)

import mixwise  # noqa: E402
from mixwise.dataprophet import DataProphet, DataProphetConfig  # noqa: E402
from mixwise.icons import ICONS  # noqa: E402
from mixwise.toy import FAMILIES, make_source  # noqa: E402

PAPER = {"ICONS 20%": 98.6, "random 20%": 95.8}


def sft_arms(pool, targets, model, processor, budget, seed, work):
    """{arm: Plan} for the SFT comparison (all computed with the same base model)."""
    dp = dict(subsample=64, seed=seed, progress=False)
    icons = dict(
        run_warmup=True, warmup_preset="tiny", proj_dim=512, work_dir=str(work / "icons"), progress=False, plots=False
    )
    selectors = {
        "random 20%": mixwise.RandomSubset(),
        "ICONS 20%": ICONS(**icons),
        # the same features (the datastores are reused), the paper's round-robin aggregator instead of the vote
        "ICONS 20% (round robin)": ICONS(aggregator="round_robin", **icons),
        "DataProphet 20% (proportional)": DataProphet(DataProphetConfig(**dp)),
        "DataProphet 20% (sharpened, power 8)": DataProphet(DataProphetConfig(sharpen="power", power=8.0, **dp)),
    }
    plans = {}
    for arm, selector in selectors.items():
        t0 = time.time()
        _, plans[arm] = mixwise.select_mixture(
            pool,
            selector,
            budget,
            seed=seed,
            model=model,
            processing_class=processor,
            targets=targets,
            model_id=f"selection-quality-base-{seed}",
        )
        print(f"  selected {arm:<38} in {time.time() - t0:5.1f}s: {plans[arm].counts}", flush=True)
    return plans


def run_seed(size, seed: int, n_pool: int, epochs: int, grpo: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="selq-"))
    families = list(FAMILIES)
    pretrain = [r for f in families for r in make_source(f, size.pretrain_rows, "train", seed=seed + 100)]
    pool = {f: make_source(f, n_pool, "train", seed=seed) for f in families}
    targets = {f: make_source(f, size.validation_rows, "validation", seed=seed) for f in families}
    tests = {f: list(make_source(f, size.test_rows, "test", seed=seed)) for f in families}

    model, processor = tt.build_model(size, seed)
    tt.train(model, processor, pretrain, size.pretrain_epochs, size.pretrain_lr, size.batch_size, seed, "pre-train")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    budget = round(0.2 * n_pool * len(families))
    plans = sft_arms(pool, targets, model, processor, budget, seed, work)

    mixture = mixwise.Mixture(pool, budget=budget, seed=seed, validate=False)
    results = {"base": tt.accuracies(model, processor, tests)}
    arms = {"full pool": [r for f in families for r in pool[f]]}
    for arm, plan in plans.items():
        arms[arm] = list(mixwise.apply_plan(mixture, plan, seed=seed))
    for arm, rows in arms.items():
        model.load_state_dict(base)
        tt.train(model, processor, rows, epochs, size.finetune_lr, size.batch_size, seed + 1, f"train {arm}")
        results[arm] = tt.accuracies(model, processor, tests)
        print(f"  {arm:<38} mean acc {np.mean(list(results[arm].values())):.3f}", flush=True)
        if arm == "full pool":  # RL post-training starts from the SFT model, as usual
            sft = {k: v.clone() for k, v in model.state_dict().items()}
    out = {"sft": results, "counts": {a: p.counts for a, p in plans.items()}}

    if grpo:
        out["grpo"] = {"start (full-pool SFT)": results["full pool"]}
        out["grpo"].update(run_grpo(model, processor, sft, pool, targets, tests, seed, work))
    return out


def run_grpo(model, processor, start, pool, targets, tests, seed, work) -> dict:
    """GRPO from the full-pool SFT model with a uniform vs DataProphet prompt allocation (DataProphet scores with
    that model); accuracy per target afterwards."""
    from trl import GRPOConfig, GRPOTrainer

    from mixwise.rewards import exact_match, per_source

    rl_pool = {f: make_source(f, len(ds), "train", seed=seed, fmt="rl") for f, ds in pool.items()}
    model.load_state_dict(start)
    base_dir = work / "start"
    model.save_pretrained(base_dir)
    processor.save_pretrained(base_dir)
    budget = 24 * len(rl_pool)
    arms = {
        "uniform": mixwise.Uniform(),
        "DataProphet": DataProphet(DataProphetConfig(subsample=64, seed=seed, progress=False)),
    }
    results = {}
    for arm, selector in arms.items():
        model.load_state_dict(start)
        mixture = mixwise.Mixture(rl_pool, budget=budget, seed=seed, validate=False)
        args = GRPOConfig(
            output_dir=str(work / f"grpo-{arm}"),
            num_train_epochs=1,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=5,
            learning_rate=5e-5,
            beta=0.0,
            use_vllm=False,
            logging_steps=5,
            save_strategy="no",
            report_to=[],
            seed=seed,
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[per_source(exact_match)],
            args=args,
            train_dataset=mixture.dataset,
            processing_class=processor,
        )
        mixwise.attach(trainer, mixture, selector=selector, targets=targets, model_id=str(base_dir))
        trainer.train()
        model.eval()
        results[arm] = tt.accuracies(model, processor, tests)
        print(
            f"  GRPO {arm:<12} mean acc {np.mean(list(results[arm].values())):.3f} plan {mixture.plan.counts}",
            flush=True,
        )
    return results


def summarize(per_seed: list[dict]) -> dict:
    arms = [a for a in per_seed[0]["sft"] if a != "base"]
    summary = {"sft": {}, "grpo": {}}
    for arm in ["base", *arms]:
        means = [np.mean(list(r["sft"][arm].values())) for r in per_seed]
        # per target, over the targets the full pool learned at all (the ratio is undefined where it scored 0)
        rel = [
            100
            * np.mean(
                [r["sft"][arm][t] / r["sft"]["full pool"][t] for t in r["sft"][arm] if r["sft"]["full pool"][t] > 0]
            )
            for r in per_seed
        ]
        full = [np.mean(list(r["sft"]["full pool"].values())) for r in per_seed]
        rel_of_means = [100 * m / max(f, 1e-9) for m, f in zip(means, full)]
        summary["sft"][arm] = {"mean_acc": _ms(means), "rel": _ms(rel), "rel_of_means": _ms(rel_of_means)}
    if "grpo" in per_seed[0]:
        for arm in per_seed[0]["grpo"]:
            summary["grpo"][arm] = {"mean_acc": _ms([np.mean(list(r["grpo"][arm].values())) for r in per_seed])}
    return summary


def _ms(values):
    return [float(np.mean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0]


def markdown(summary: dict, seeds, seconds: float) -> str:
    lines = [
        f"Seeds {list(seeds)}, {seconds / 60:.1f} min. Mean ± std over seeds.",
        "",
        "| SFT arm | mean accuracy | Rel. (% of full pool, per target) | mean acc. / full-pool mean acc. (%) | paper Rel. |",
        "|---|---:|---:|---:|---:|",
    ]
    for arm, s in summary["sft"].items():
        (m, sd), (r, rsd), (q, qsd) = s["mean_acc"], s["rel"], s["rel_of_means"]
        lines.append(
            f"| {arm} | {m:.3f} ± {sd:.3f} | {r:.1f} ± {rsd:.1f} | {q:.1f} ± {qsd:.1f} | {PAPER.get(arm, '')} |"
        )
    if summary["grpo"]:
        lines += ["", "| GRPO allocation | mean accuracy after GRPO |", "|---|---:|"]
        for arm, s in summary["grpo"].items():
            lines.append(f"| {arm} | {s['mean_acc'][0]:.3f} ± {s['mean_acc'][1]:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--grpo", action="store_true")
    p.add_argument("--out", default="benchmarks/out/selection_quality")
    p.add_argument("--pool", type=int, default=0, help="pool rows per family (default 200; --small 60)")
    p.add_argument("--epochs", type=int, default=0, help="fine-tuning epochs of every arm (default 3; --small 2)")
    p.add_argument("--pretrain_rows", type=int, default=0, help="base pre-training rows per family (default 100)")
    p.add_argument("--pretrain_epochs", type=int, default=0, help="base pre-training epochs (default 2)")
    a = p.parse_args(argv)
    size = tt.SMALL if a.small else tt.DEFAULT
    # The base has learned the answer format but not the tasks, so that the fine-tuning data matters: with the
    # transfer benchmark's fully pre-trained base (600 rows x 5 epochs per family, the same distribution as the
    # pool) no arm, the full pool included, improved on the base.
    n_pool, epochs, pretrain_rows, pretrain_epochs = (60, 2, 100, 2) if a.small else (200, 3, 100, 2)
    n_pool, epochs = a.pool or n_pool, a.epochs or epochs
    size = replace(
        size,
        pretrain_rows=a.pretrain_rows or pretrain_rows,
        pretrain_epochs=a.pretrain_epochs or pretrain_epochs,
    )
    start = time.time()
    per_seed = []
    for seed in a.seeds:
        print(f"seed {seed}", flush=True)
        per_seed.append(run_seed(size, seed, n_pool, epochs, a.grpo))
    summary = summarize(per_seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"per_seed": per_seed, "summary": summary}, indent=2))
    text = markdown(summary, a.seeds, time.time() - start)
    (out / "results.md").write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main()
