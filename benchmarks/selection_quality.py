"""Selection quality on the toy world: same base, same budget, same training — which selection trains best?

Everything fine-tunes the cached toy base (`mixwise.toybase`, built once by `mixwise toy-base`) with one recipe
(full fine-tuning, AdamW, lr 1e-3, `--epochs` over the selected rows, answer tokens only) and measures greedy
exact match on each family's test split. Per seed, the **pool** is every toy family (`pool` rows each) plus planted
sources: `unrelated` (textures with weather questions), `colour_mislabelled` (fresh colour rows, every answer wrong),
`spatial_duplicates` (`pool / 10` distinct spatial rows, each 10 times) and within-family label noise (30% of the
`chart` rows get a wrong answer). Targets for selection are the families' validation rows; accuracies use test rows.

1. **Learnability gate** (runs first): for every family t, the oracle (the budget on t's own clean rows) against a
   random budget of the same size; a target whose oracle does not beat random by `--gate` on every seed gets no
   selector figures (they are refused, not reported).
2. **Targeted**: each single target and the two-target subset `colour + spatial` (budget = one family's rows).
   Arms: full pool, random, oracle, uniform (per source), DataProphet (Alg. 1) and its instance level (Alg. 2),
   paper and default presets, ICONS paper and default; ablations of every default fix (diagnostics for every target,
   training on the two-target subset).
3. **Multi-target** (ICONS's Rel.): every family a target, 20% of the pool; Rel. = mean over targets of accuracy /
   full-pool accuracy.
4. **GRPO allocation**: TRL's GRPOTrainer from the base on a prompt budget over the RL-format pool, targets
   `colour + spatial`: uniform vs DataProphet (paper, default); mean test accuracy on the targets afterwards.

Before training, every arm's selection is diagnosed: share of the budget on the target families and on each planted
source, noisy rows selected, distinct rows, rows selected more than once. Figures: per seed, paired differences
against random, wins, and the fraction of the random → oracle gap closed ((arm − random) / (oracle − random), mean
over (seed, target)). Goals of issue 12 are checked and printed as met / missed.

    python benchmarks/selection_quality.py [--quick | --tiny] [--seeds 0 1 2] [--no-grpo] [--out DIR]

`--quick` is a reduced size (< 5 min); `--tiny` runs every stage at toy sizes (the test suite's smoke test).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import mixwise  # noqa: E402
import mixwise.fingerprint  # noqa: E402
import mixwise.models  # noqa: E402
import mixwise.plan  # noqa: E402
import mixwise.selectors  # noqa: E402
from mixwise import toy, toybase  # noqa: E402
from mixwise.dataprophet import DataProphet, DataProphetConfig, InstanceScores  # noqa: E402
from mixwise.dataprophet.tau import Matrix  # noqa: E402
from mixwise.icons import ICONSConfig, run_icons  # noqa: E402
from mixwise.icons.aggregation import aggregate  # noqa: E402
from mixwise.signals.diversity import content_hashes  # noqa: E402

PLANTED = ("unrelated", "colour_mislabelled", "spatial_duplicates")
NOISY_FAMILY, NOISE = "chart", 0.3
PAIR = ("colour", "spatial")
PAPER = {"ICONS Rel. (20%)": 98.6, "random Rel. (20%)": 95.8}


@dataclass
class Size:
    """One benchmark configuration (rows are per source)."""

    pool: int = 160
    budget: int = 160  # targeted budget: one family's rows
    multi_share: float = 0.2
    epochs: float = 4
    lr: float = 1e-3
    batch_size: int = 16
    validation: int = 64
    test: int = 150
    subsample: int = 64
    n_clusters: int = 10
    proj_dim: int = 256
    singles: tuple[str, ...] = toy.FAMILIES
    grpo_prompts: int = 128
    grpo_lr: float = 2e-4
    ablations: bool = True
    multi: bool = True


DEFAULT = Size()
QUICK = Size(pool=80, budget=80, validation=32, test=80, subsample=32, proj_dim=128, singles=PAIR, grpo_prompts=64)
TINY = Size(
    pool=24, budget=24, epochs=1, validation=12, test=12, subsample=16, n_clusters=4, proj_dim=32,
    singles=("colour",), grpo_prompts=8,
)  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# the pool
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class World:
    """One seed's pool, targets, tests, their encodings and the facts the diagnostics need."""

    pool: dict  # name -> Dataset (SFT)
    names: list[str]
    offsets: dict[str, int]
    validation: dict
    tests: dict
    encoded: toybase.EncodedRows
    encoded_tests: dict
    noisy: set[int]  # flat ids of the noisy chart rows
    hashes: list[str]  # content hash per flat row
    rl_pool: dict = field(default_factory=dict)

    def flat(self, source: str, row: int) -> int:
        return self.offsets[source] + int(row)

    def source_of(self, flat: int) -> str:
        for n in reversed(self.names):
            if flat >= self.offsets[n]:
                return n
        raise IndexError(flat)

    def family_rows(self, family: str) -> list[int]:
        lo = self.offsets[family]
        return list(range(lo, lo + len(self.pool[family])))


def make_pool(size: Size, seed: int, fmt: str = "sft") -> tuple[dict, list[int]]:
    n = size.pool
    pool = {f: toy.make_source(f, n, "train", seed=seed, fmt=fmt) for f in toy.FAMILIES}
    pool[NOISY_FAMILY], noisy = toy.mislabel(pool[NOISY_FAMILY], NOISY_FAMILY, NOISE, seed=seed)
    pool["unrelated"] = toy.make_unrelated(n, "train", seed=seed, fmt=fmt)
    clean_twin = toy.make_source("colour", n, "train", seed=seed + 50, fmt=fmt)
    pool["colour_mislabelled"], _ = toy.mislabel(clean_twin, "colour", 1.0, seed=seed, source="colour_mislabelled")
    distinct = toy.make_source("spatial", max(2, n // 10), "train", seed=seed + 60, fmt=fmt)
    pool["spatial_duplicates"] = toy.duplicate(distinct, 10, source="spatial_duplicates")
    return pool, noisy


def build_world(size: Size, seed: int, processor) -> World:
    pool, noisy = make_pool(size, seed)
    names = list(pool)
    offsets, k = {}, 0
    for n in names:
        offsets[n] = k
        k += len(pool[n])
    rows = [r for n in names for r in pool[n]]
    validation = {f: toy.make_source(f, size.validation, "validation", seed=seed) for f in toy.FAMILIES}
    tests = {f: list(toy.make_source(f, size.test, "test", seed=seed)) for f in toy.FAMILIES}
    hashes = [h for n in names for h in content_hashes(pool[n])]
    return World(
        pool=pool,
        names=names,
        offsets=offsets,
        validation=validation,
        tests=tests,
        encoded=toybase.EncodedRows(rows, processor),
        encoded_tests={f: toybase.EncodedRows(t, processor) for f, t in tests.items()},
        noisy={offsets[NOISY_FAMILY] + i for i in noisy},
        hashes=hashes,
    )


# ----------------------------------------------------------------------------------------------------------------
# selections (flat row ids into the pool)
# ----------------------------------------------------------------------------------------------------------------


def plan_rows(world: World, plan: mixwise.Plan, seed: int) -> list[int]:
    resolved = plan.resolve(seed)[0]
    return [world.flat(s, i) for s in world.names for i in resolved.get(s, [])]


def oracle(world: World, targets, budget: int) -> list[int]:
    """The budget split evenly over the targets' own (clean-source) rows."""
    per = mixwise.plan.allocate({t: 1.0 for t in targets}, budget)
    out = []
    for t in targets:
        rows = world.family_rows(t)
        out += [rows[k % len(rows)] for k in range(per[t])]
    return out


def random_rows(world: World, budget: int, seed: int) -> list[int]:
    rng = np.random.default_rng(mixwise.fingerprint.stable_seed(seed, "selection-quality-random"))
    return sorted(int(i) for i in rng.choice(len(world.encoded), size=budget, replace=False))


def uniform_rows(world: World, budget: int, seed: int) -> list[int]:
    sizes = {n: len(d) for n, d in world.pool.items()}
    return plan_rows(world, mixwise.Plan.uniform(sizes, budget, seed=seed), seed)


DP_VARIANTS = {
    "DataProphet (paper)": {"preset": "paper"},
    "DataProphet (default)": {},
}
DP_ABLATIONS = {
    "DataProphet default, uncentred": {"centre": "none"},
    "DataProphet default, signed similarities": {"similarity_sign": "signed"},
    "DataProphet default, shifted similarities": {"similarity_sign": "shift"},
    "DataProphet default, no PPL guard": {"ppl_guard": "none"},
    "DataProphet default, PPL cap": {"ppl_guard": "cap"},
    "DataProphet default, paper diversity": {"diversity_dedup": False},
    "DataProphet default, rows drawn with repeats": {"dedup_rows": False},
    "DataProphet default, power 4": {"sharpen": "power", "power": 4.0},
}
ICONS_VARIANTS = {"ICONS (paper)": {"preset": "paper"}, "ICONS (default)": {}}
ICONS_ABLATIONS = {
    "ICONS default, duplicates not merged": {"dedup": False},
    "ICONS default, no coverage floor": {"coverage_floor": 0.0},
    "ICONS default, one mean gradient per target": {"answer_subtasks": False},
    "ICONS round robin (paper Table 3)": {"preset": "paper", "aggregator": "round_robin"},
}


def dp_config(size: Size, seed: int, **kw) -> DataProphetConfig:
    return DataProphetConfig(subsample=size.subsample, seed=seed, n_clusters=size.n_clusters, progress=False, **kw)


class Selections:
    """Scores every selector once per seed (all seven targets), then selects for any target set from the scores."""

    def __init__(self, size: Size, seed: int, world: World, model, processor, work: Path):
        self.size, self.seed, self.world = size, seed, world
        self.timings: dict[str, float] = {}
        model_id = f"{toybase.toy_base_dir().name}-selection-quality"
        t0 = time.time()
        base = DataProphet(dp_config(size, seed))
        self.dp_results = {}
        for name, kw in {**DP_VARIANTS, **DP_ABLATIONS}.items():
            dp = DataProphet(dp_config(size, seed, **kw))
            dp.computer.memory = base.computer.memory  # one set of signals, read by every variant
            self.dp_results[name] = (dp, dp.score(world.pool, world.validation, model, processor, model_id=model_id))
        self.row_groups = DataProphet.row_groups(world.pool)
        self.timings["DataProphet (all variants)"] = time.time() - t0
        t0 = time.time()
        self.dpi = {}
        for name, kw in DP_VARIANTS.items():
            dp = DataProphet(dp_config(size, seed, **kw))
            dp.computer.memory = base.computer.memory
            self.dpi[name] = dp.score_instances(world.pool, world.validation, model, processor, model_id=model_id)
        self.timings["DataProphet instances"] = time.time() - t0
        t0 = time.time()
        mixture = mixwise.Mixture(world.pool, budget=size.budget, seed=seed, validate=False)
        cfg = ICONSConfig(
            run_warmup=True,
            warmup_preset="small",
            proj_dim=size.proj_dim,
            work_dir=str(work / "icons"),
            device="cpu",
            progress=False,
            plots=False,
            warmup={"seed": seed},
        )
        # the same warm-up and feature stores; influence with one mean gradient per target, or one per answer
        self.icons = {}
        for answer_subtasks in (False, True):
            self.icons[answer_subtasks] = run_icons(
                mixture, world.validation, size.budget, config=replace(cfg, answer_subtasks=answer_subtasks),
                model=model, processing_class=processor, model_id=model_id,
            )  # fmt: skip
        self.timings["ICONS (warm-up, features, influence)"] = time.time() - t0
        self.warmup = self.icons[True].checkpoints

    def dataprophet(self, name: str, targets, budget: int) -> list[int]:
        dp, result = self.dp_results[name]
        sub = result.for_targets(list(targets))
        sizes = {n: len(d) for n, d in self.world.pool.items()}
        plan = sub.to_plan(sizes, budget, row_groups=self.row_groups, seed=self.seed)
        return plan_rows(self.world, plan, self.seed)

    def dataprophet_instances(self, name: str, targets, budget: int) -> list[int]:
        scores = self.dpi[name]
        cols = [scores.scores.cols.index(t) for t in targets]
        values = scores.scores.values[:, cols]
        sub = InstanceScores(
            sources=scores.sources,
            rows=scores.rows,
            scores=Matrix(scores.scores.rows, list(targets), values),
            combined=values.mean(axis=1),
            groups=scores.groups,
        )
        distinct = bool(self.dp_results[name][0].settings.dedup_rows)
        picked = sub.select(top_k=budget, distinct=distinct)
        return [self.world.flat(s, i) for s in self.world.names for i in picked.get(s, [])]

    def icons_rows(self, kw: dict, targets, budget: int) -> list[int]:
        cfg = ICONSConfig(**kw, progress=False, plots=False)
        result = self.icons[bool(cfg.answer_subtasks)]
        tasks = result.influence.tasks
        scores = result.influence.scores[:, [tasks.index(t) for t in targets]]
        groups = self.icons[True].groups if cfg.dedup else None
        selection = aggregate(
            scores,
            budget,
            method=cfg.aggregator,
            tasks=list(targets),
            groups=groups,
            coverage_floor=cfg.coverage_floor if cfg.aggregator == "vote" else 0.0,
        )
        return sorted(int(i) for i in selection.order)


def diagnose(world: World, rows: list[int], targets) -> dict:
    """Before training: where the budget went."""
    n = max(1, len(rows))
    sources = [world.source_of(i) for i in rows]
    counts: dict[str, int] = {}
    for s in sources:
        counts[s] = counts.get(s, 0) + 1
    content: dict[str, int] = {}
    for i in rows:
        content[world.hashes[i]] = content.get(world.hashes[i], 0) + 1
    return {
        "target_share": sum(counts.get(t, 0) for t in targets) / n,
        **{f"{p}_share": counts.get(p, 0) / n for p in PLANTED},
        "noisy_rows": sum(i in world.noisy for i in rows),
        "distinct_rows": len(content),
        "repeated_contents": sum(c > 1 for c in content.values()),
        "max_copies": max(content.values()) if content else 0,
        "counts": counts,
    }


# ----------------------------------------------------------------------------------------------------------------
# training
# ----------------------------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, size: Size, model, world: World, seed: int):
        self.size, self.model, self.world, self.seed = size, model, world, seed
        self.base = copy.deepcopy(model.state_dict())
        self.runs, self.seconds = 0, 0.0
        self.cache: dict = {}  # two arms that select the same rows train the same model: train it once

    def accuracy(self, rows: list[int], families, epochs: float | None = None) -> dict[str, float]:
        rows = sorted(int(i) for i in rows)
        key = (tuple(rows), tuple(families), epochs)
        if key in self.cache:
            return dict(self.cache[key])
        t0 = time.time()
        self.model.load_state_dict(self.base)
        toybase.train_rows(
            self.model, self.world.encoded, rows, epochs or self.size.epochs, self.size.lr, self.size.batch_size,
            seed=self.seed + 1,
        )  # fmt: skip
        out = {f: float(toybase.exact_match(self.model, self.world.encoded_tests[f]).mean()) for f in families}
        self.model.load_state_dict(self.base)
        self.runs += 1
        self.seconds += time.time() - t0
        self.cache[key] = dict(out)
        return out

    def base_accuracy(self) -> dict[str, float]:
        self.model.load_state_dict(self.base)
        return {f: float(toybase.exact_match(self.model, t).mean()) for f, t in self.world.encoded_tests.items()}


def run_seed(size: Size, seed: int, model, processor, gate: float, grpo: bool) -> dict:
    work = Path(tempfile.mkdtemp(prefix="selq-"))
    t_seed = time.time()
    world = build_world(size, seed, processor)
    trainer = Trainer(size, model, world, seed)
    out: dict = {"seed": seed, "base": trainer.base_accuracy(), "timings": {}}
    families = list(toy.FAMILIES)
    B = size.budget

    # 1. learnability gate: oracle vs random per family, before any selector runs
    t0 = time.time()
    rnd = random_rows(world, B, seed)
    shared = {"random": rnd, "uniform": uniform_rows(world, B, seed)}
    acc_shared = {arm: trainer.accuracy(rows, families) for arm, rows in shared.items()}
    gate_rows = {t: oracle(world, [t], B) for t in size.singles}
    out["gate"] = {}
    for t, rows in gate_rows.items():
        acc = trainer.accuracy(rows, [t])[t]
        out["gate"][t] = {"oracle": acc, "random": acc_shared["random"][t], "margin": acc - acc_shared["random"][t]}
    out["timings"]["gate"] = time.time() - t0
    print(
        "  gate: " + " ".join(f"{t} {g['oracle']:.2f}/{g['random']:.2f}" for t, g in out["gate"].items()), flush=True
    )

    # selections (scored once for all targets)
    sel = Selections(size, seed, world, model, processor, work)
    out["timings"].update(sel.timings)
    out["warmup"] = sel.warmup

    def arms_for(targets, budget, with_ablations):
        arms = {"random": shared["random"] if budget == B else random_rows(world, budget, seed),
                "uniform": shared["uniform"] if budget == B else uniform_rows(world, budget, seed),
                "oracle": oracle(world, targets, budget)}  # fmt: skip
        for name in DP_VARIANTS:
            arms[name] = sel.dataprophet(name, targets, budget)
            arms[name.replace("DataProphet", "DataProphet instances")] = sel.dataprophet_instances(
                name, targets, budget
            )
        for name, kw in ICONS_VARIANTS.items():
            arms[name] = sel.icons_rows(kw, targets, budget)
        ablations = {}
        for name in DP_ABLATIONS:
            ablations[name] = sel.dataprophet(name, targets, budget)
        for name, kw in ICONS_ABLATIONS.items():
            ablations[name] = sel.icons_rows(kw, targets, budget)
        return arms, ablations if with_ablations else {}, ablations

    # 2. targeted
    t0 = time.time()
    out["targeted"] = {}
    settings = [(t,) for t in size.singles] + [PAIR]
    for targets in settings:
        key = "+".join(targets)
        arms, trained_ablations, ablations = arms_for(targets, B, size.ablations and targets == PAIR)
        entry = {"diagnostics": {a: diagnose(world, r, targets) for a, r in {**arms, **ablations}.items()}}
        passed = all(t in out["gate"] and out["gate"][t]["margin"] >= gate for t in targets)
        if targets == PAIR and not all(t in out["gate"] for t in targets):
            passed = True  # the pair's families were not single targets here: gate on the pair's own oracle
        entry["gate_passed"] = passed
        acc = {"random": acc_shared["random"], "uniform": acc_shared["uniform"]}
        if len(targets) == 1 and targets[0] in out["gate"]:
            acc["oracle"] = {targets[0]: out["gate"][targets[0]]["oracle"]}
        for arm, rows in {**arms, **trained_ablations}.items():
            if arm in acc:
                continue
            if arm != "oracle" and not passed:
                continue  # the gate refuses: no selector figures for this target
            acc[arm] = trainer.accuracy(rows, list(targets))
        entry["accuracy"] = {a: {t: v[t] for t in targets} for a, v in acc.items()}
        out["targeted"][key] = entry
        print(
            f"  {key:<16} " + " ".join(f"{a.split(' (')[0][:14]}={np.mean(list(v.values())):.2f}"
                                       for a, v in entry["accuracy"].items()),
            flush=True,
        )  # fmt: skip
    out["timings"]["targeted"] = time.time() - t0

    # 3. multi-target: every family, 20% of the pool
    if size.multi:
        t0 = time.time()
        m_budget = round(size.multi_share * len(world.encoded))
        arms, _, _ = arms_for(families, m_budget, False)
        arms = {a: r for a, r in arms.items() if a != "oracle"}
        arms["full pool"] = list(range(len(world.encoded)))
        out["multi"] = {
            "budget": m_budget,
            "diagnostics": {a: diagnose(world, r, families) for a, r in arms.items()},
            "accuracy": {a: trainer.accuracy(r, families) for a, r in arms.items()},
        }
        out["timings"]["multi-target"] = time.time() - t0
        full = out["multi"]["accuracy"]["full pool"]
        print("  multi " + " ".join(f"{a.split(' (')[0][:14]}={100 * rel(v, full):.1f}"
                                    for a, v in out["multi"]["accuracy"].items()), flush=True)  # fmt: skip

    # 4. GRPO allocation
    if grpo:
        t0 = time.time()
        out["grpo"] = run_grpo(size, seed, world, sel, model, processor, trainer.base, work)
        out["timings"]["grpo"] = time.time() - t0
        model.load_state_dict(trainer.base)
    out["timings"]["training runs"] = trainer.seconds
    out["timings"]["seed total"] = time.time() - t_seed
    out["training_runs"] = trainer.runs
    return out


def rel(acc: dict, full: dict) -> float:
    """ICONS's Rel.: mean over targets of accuracy / full-pool accuracy (targets where the full pool scored > 0)."""
    return float(np.mean([acc[t] / full[t] for t in acc if full.get(t, 0) > 0]))


class GivenRows:
    """A selector that returns a fixed per-sample plan (the allocation computed by the benchmark)."""

    name = "given"

    def __init__(self, rows: dict[str, list[int]], label: str):
        self.rows, self.label = rows, label

    def config(self):
        return {"label": self.label}

    def select(self, context):
        return mixwise.Plan.from_rows(self.rows, context.sizes, **mixwise.selectors.plan_kwargs(self, context))


def run_grpo(size: Size, seed: int, world: World, sel: Selections, model, processor, base_state, work: Path) -> dict:
    """GRPO from the base on `grpo_prompts` prompts of the RL pool allocated uniformly or by DataProphet for PAIR."""
    from trl import GRPOConfig, GRPOTrainer

    from mixwise.rewards import exact_match, per_source

    rl_pool, _ = make_pool(size, seed, fmt="rl")
    P = size.grpo_prompts
    allocations = {"uniform": uniform_rows(world, P, seed)}
    for name in DP_VARIANTS:
        allocations[name] = sel.dataprophet(name, PAIR, P)
    results = {}
    for k, (arm, rows) in enumerate(allocations.items()):
        model.load_state_dict(base_state)
        per_source_rows: dict[str, list[int]] = {n: [] for n in world.names}
        for i in rows:
            s = world.source_of(i)
            per_source_rows[s].append(i - world.offsets[s])
        mixture = mixwise.Mixture(rl_pool, budget=P, seed=seed, validate=False)
        args = GRPOConfig(
            output_dir=str(work / f"grpo-{k}"),
            num_train_epochs=1,
            per_device_train_batch_size=8,
            num_generations=4,
            max_completion_length=4,
            learning_rate=size.grpo_lr,
            beta=0.0,
            use_vllm=False,
            logging_steps=1000,
            save_strategy="no",
            report_to=[],
            seed=seed,
            use_cpu=True,
            bf16=False,
            disable_tqdm=True,
            temperature=1.0,
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[per_source(exact_match)],
            args=args,
            train_dataset=mixture.dataset,
            processing_class=processor,
        )
        mixwise.attach(trainer, mixture, selector=GivenRows(per_source_rows, arm), model_id="toy-base")
        with toybase.one_thread():
            trainer.train()
        model.eval()
        acc = {t: float(toybase.exact_match(model, world.encoded_tests[t]).mean()) for t in PAIR}
        results[arm] = {"accuracy": acc, "diagnostics": diagnose(world, rows, PAIR)}
        print(f"  GRPO {arm:<24} {np.mean(list(acc.values())):.3f} counts {mixture.plan.counts}", flush=True)
    model.load_state_dict(base_state)
    base = {t: float(toybase.exact_match(model, world.encoded_tests[t]).mean()) for t in PAIR}
    results["base (no GRPO)"] = {"accuracy": base}
    return results


# ----------------------------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------------------------


def _ms(values) -> tuple[float, float]:
    values = list(values)
    return float(np.mean(values)), float(statistics.stdev(values)) if len(values) > 1 else 0.0


def summarize(per_seed: list[dict], gate: float) -> dict:
    s: dict = {"gate": {}, "targeted": {}, "multi": {}, "grpo": {}, "goals": []}
    singles = list(per_seed[0]["gate"])
    for t in singles:
        margins = [r["gate"][t]["margin"] for r in per_seed]
        s["gate"][t] = {
            "oracle": _ms(r["gate"][t]["oracle"] for r in per_seed),
            "random": _ms(r["gate"][t]["random"] for r in per_seed),
            "min_margin": min(margins),
            "passed": all(m >= gate for m in margins),
        }
    for key in per_seed[0]["targeted"]:
        entries = [r["targeted"][key] for r in per_seed]
        passed = all(e["gate_passed"] for e in entries)
        arms = {}
        for arm in entries[0]["diagnostics"]:
            row: dict = {"diagnostics": {}}
            for d in ("target_share", *[f"{p}_share" for p in PLANTED], "noisy_rows", "distinct_rows",
                      "repeated_contents", "max_copies"):  # fmt: skip
                row["diagnostics"][d] = _ms(e["diagnostics"][arm][d] for e in entries)
            if passed and all(arm in e["accuracy"] for e in entries):
                means = [float(np.mean(list(e["accuracy"][arm].values()))) for e in entries]
                rnd = [float(np.mean(list(e["accuracy"]["random"].values()))) for e in entries]
                unif = [float(np.mean(list(e["accuracy"]["uniform"].values()))) for e in entries]
                orc = [float(np.mean(list(e["accuracy"]["oracle"].values()))) for e in entries]
                diffs = [m - r for m, r in zip(means, rnd)]
                gaps = [(m - r) / (o - r) for m, r, o in zip(means, rnd, orc) if o - r > 0]
                row.update(
                    accuracy=_ms(means),
                    per_seed=means,
                    vs_random=diffs,
                    wins_vs_random=sum(d > 0 for d in diffs),
                    vs_uniform=[m - u for m, u in zip(means, unif)],
                    wins_vs_uniform=sum(m > u for m, u in zip(means, unif)),
                    gap_closed=float(np.mean(gaps)) if gaps else float("nan"),
                    gap_closed_per_seed=gaps,
                )
            arms[arm] = row
        s["targeted"][key] = {"gate_passed": passed, "arms": arms}
    if "multi" in per_seed[0]:
        rels = {}
        for arm in per_seed[0]["multi"]["accuracy"]:
            vals = [100 * rel(r["multi"]["accuracy"][arm], r["multi"]["accuracy"]["full pool"]) for r in per_seed]
            rels[arm] = {
                "rel": _ms(vals),
                "per_seed": vals,
                "mean_acc": _ms(np.mean(list(r["multi"]["accuracy"][arm].values())) for r in per_seed),
                "diagnostics": {
                    d: _ms(r["multi"]["diagnostics"][arm][d] for r in per_seed)
                    for d in (
                        "target_share",
                        *[f"{p}_share" for p in PLANTED],
                        "noisy_rows",
                        "distinct_rows",
                        "repeated_contents",
                    )
                },  # fmt: skip
            }
        s["multi"] = rels
    if "grpo" in per_seed[0]:
        for arm in per_seed[0]["grpo"]:
            vals = [float(np.mean(list(r["grpo"][arm]["accuracy"].values()))) for r in per_seed]
            s["grpo"][arm] = {"accuracy": _ms(vals), "per_seed": vals}
    s["goals"] = goals(s, per_seed)
    return s


def goals(s: dict, per_seed: list[dict]) -> list[dict]:
    """Issue 12's goals, each with its measured figure and met / missed."""
    out = []

    def add(goal, figure, met):
        out.append({"goal": goal, "figure": figure, "met": bool(met)})

    singles = [k for k, v in s["targeted"].items() if v["gate_passed"]]
    # ICONS beats random on every (seed, target), closes >= 60% of the gap; DataProphet beats uniform on every seed,
    # closes >= 40%
    for arm, need_gap, rival in (("ICONS (default)", 0.6, "random"), ("DataProphet (default)", 0.4, "uniform")):
        wins, total, gaps = 0, 0, []
        for key in singles:
            row = s["targeted"][key]["arms"].get(arm, {})
            if "per_seed" not in row:
                continue
            diffs = row["vs_random"] if rival == "random" else row["vs_uniform"]
            wins += sum(d > 0 for d in diffs)
            total += len(diffs)
            gaps += row["gap_closed_per_seed"]
        gap = float(np.mean(gaps)) if gaps else float("nan")
        add(f"targeted: {arm} beats {rival} on every (seed, target)", f"{wins}/{total}", total and wins == total)
        add(f"targeted: {arm} closes >= {need_gap:.0%} of the random→oracle gap", f"{gap:.1%}", gap >= need_gap)
    # planted
    for arm in ("ICONS (default)", "DataProphet (default)"):
        worst = max(s["targeted"][k]["arms"][arm]["diagnostics"]["unrelated_share"][0] for k in s["targeted"])
        add(f"planted: {arm} puts <= 5% of the budget on the unrelated source (worst target, mean over seeds)",
            f"{worst:.1%}", worst <= 0.05)  # fmt: skip
        repeats = max(r["targeted"][k]["diagnostics"][arm]["repeated_contents"] for r in per_seed
                      for k in r["targeted"])  # fmt: skip
        add(f"planted: {arm} selects no duplicated row more than once", f"{repeats} rows repeated (worst)",
            repeats == 0)  # fmt: skip
        if "colour" in s["targeted"]:
            d = s["targeted"]["colour"]["arms"][arm]["diagnostics"]
            copy_share = d["colour_mislabelled_share"][0]
            twin_share = d["target_share"][0]
            add(f"planted: {arm}: mislabelled colour copy gets <= half its clean twin's share (target colour)",
                f"{copy_share:.1%} vs {twin_share:.1%}", copy_share <= 0.5 * twin_share)  # fmt: skip
    if s["multi"]:
        icons = s["multi"].get("ICONS (default)", {}).get("per_seed", [])
        rnd = s["multi"]["random"]["per_seed"]
        wins = sum(a - r >= 3 for a, r in zip(icons, rnd))
        add("multi-target: ICONS Rel. >= random's + 3 points on 3 of 3 seeds",
            f"{wins}/{len(rnd)} (" + ", ".join(f"{a - r:+.1f}" for a, r in zip(icons, rnd)) + ")",
            wins == len(rnd) and len(rnd) >= 3)  # fmt: skip
    if s["grpo"]:
        dp = s["grpo"]["DataProphet (default)"]["per_seed"]
        un = s["grpo"]["uniform"]["per_seed"]
        wins = sum(a > b for a, b in zip(dp, un))
        add("GRPO: DataProphet's allocation beats uniform on mean accuracy on 3 of 3 seeds",
            f"{wins}/{len(un)} (" + ", ".join(f"{a - b:+.3f}" for a, b in zip(dp, un)) + ")",
            wins == len(un) and len(un) >= 3)  # fmt: skip
    return out


def markdown(s: dict, seeds, seconds: float, base_info: dict, timings: dict) -> str:
    L = [f"Seeds {list(seeds)}; {seconds / 60:.1f} min (the toy base read from the cache). Mean ± std over seeds.", ""]
    L += [f"Base: {base_info['parameters'] / 1e6:.2f}M parameters, cache `{base_info['fingerprint']}`.", ""]
    L += ["Time per stage (s, summed over seeds): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    L += ["### Learnability gate (oracle vs random, the same budget)", "",
          "| target | oracle | random | smallest per-seed margin | passed |", "|---|---:|---:|---:|:---:|"]  # fmt: skip
    for t, g in s["gate"].items():
        L.append(f"| {t} | {g['oracle'][0]:.3f} ± {g['oracle'][1]:.3f} | {g['random'][0]:.3f} ± {g['random'][1]:.3f} "
                 f"| {g['min_margin']:+.3f} | {'yes' if g['passed'] else '**no**'} |")  # fmt: skip
    L += ["", "### Targeted", ""]
    for key, v in s["targeted"].items():
        L += [f"**Target {key}**" + ("" if v["gate_passed"] else " — gate not passed: selector figures refused"), ""]
        L += ["| arm | accuracy | Δ vs random per seed | wins vs random | gap closed | target share | unrelated | "
              "mislabelled copy | duplicates src | noisy rows | distinct rows | repeated rows |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for arm, r in v["arms"].items():
            d = r["diagnostics"]
            acc = f"{r['accuracy'][0]:.3f} ± {r['accuracy'][1]:.3f}" if "accuracy" in r else "—"
            dif = ", ".join(f"{x:+.3f}" for x in r.get("vs_random", [])) or "—"
            wins = f"{r['wins_vs_random']}/{len(r['vs_random'])}" if "vs_random" in r else "—"
            gap = f"{r['gap_closed']:.0%}" if "gap_closed" in r else "—"
            L.append(
                f"| {arm} | {acc} | {dif} | {wins} | {gap} | {d['target_share'][0]:.0%} | {d['unrelated_share'][0]:.1%} | "
                f"{d['colour_mislabelled_share'][0]:.1%} | {d['spatial_duplicates_share'][0]:.1%} | "
                f"{d['noisy_rows'][0]:.1f} | {d['distinct_rows'][0]:.1f} | {d['repeated_contents'][0]:.1f} |"
            )
        L.append("")
    if s["multi"]:
        L += ["### Multi-target (every family a target, 20% of the pool)", "",
              "| arm | Rel. (%) | Rel. per seed | mean accuracy | target share | unrelated | mislabelled copy | "
              "duplicates src | noisy rows | distinct rows |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for arm, r in s["multi"].items():
            d = r["diagnostics"]
            L.append(f"| {arm} | {r['rel'][0]:.1f} ± {r['rel'][1]:.1f} | {', '.join(f'{x:.1f}' for x in r['per_seed'])} "
                     f"| {r['mean_acc'][0]:.3f} | {d['target_share'][0]:.0%} | {d['unrelated_share'][0]:.1%} | "
                     f"{d['colour_mislabelled_share'][0]:.1%} | {d['spatial_duplicates_share'][0]:.1%} | "
                     f"{d['noisy_rows'][0]:.1f} | {d['distinct_rows'][0]:.0f} |")  # fmt: skip
        L += [
            "",
            f"Paper (LLaVA-665K, 20%): ICONS Rel. {PAPER['ICONS Rel. (20%)']}, random {PAPER['random Rel. (20%)']}.",
            "",
        ]
    if s["grpo"]:
        L += ["### GRPO allocation (targets " + " + ".join(PAIR) + ")", "",
              "| allocation | mean target accuracy after GRPO | per seed |", "|---|---:|---|"]  # fmt: skip
        for arm, r in s["grpo"].items():
            L.append(f"| {arm} | {r['accuracy'][0]:.3f} ± {r['accuracy'][1]:.3f} | "
                     f"{', '.join(f'{x:.3f}' for x in r['per_seed'])} |")  # fmt: skip
        L.append("")
    L += ["### Goals (issue 12)", "", "| goal | measured | met |", "|---|---|:---:|"]
    for g in s["goals"]:
        L.append(f"| {g['goal']} | {g['figure']} | {'yes' if g['met'] else '**missed**'} |")
    return "\n".join(L) + "\n"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = p.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="reduced size (under 5 minutes)")
    group.add_argument("--tiny", action="store_true", help="every stage at toy sizes (smoke test)")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--no-grpo", action="store_true")
    p.add_argument("--gate", type=float, default=0.05, help="oracle − random margin every seed must clear")
    p.add_argument("--out", default="benchmarks/out/selection_quality")
    p.add_argument("--cache_dir", default=None, help="toy base cache (default: $MIXWISE_CACHE or ~/.cache/mixwise)")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override a size field")
    a = p.parse_args(argv)
    size = TINY if a.tiny else QUICK if a.quick else DEFAULT
    for item in a.set:
        key, _, value = item.partition("=")
        size = replace(size, **{key: type(getattr(size, key))(value)})
    seeds = a.seeds if a.seeds is not None else ([0] if a.tiny else [0, 1] if a.quick else [0, 1, 2])
    torch.set_num_threads(1)
    start = time.time()
    if a.tiny:  # a small base, so the smoke test does not pre-train the full one
        base_cfg = toybase.ToyBaseConfig(pretrain_rows=8, pretrain_epochs=1)
    else:
        base_cfg = toybase.ToyBaseConfig()
    path = toybase.build_toy_base(base_cfg, a.cache_dir)
    model, processor = mixwise.models.load_model(path)
    base_info = json.loads((path / toybase.BASE_FILE).read_text())
    t_base = time.time() - start
    print(f"selection_quality: {'tiny' if a.tiny else 'quick' if a.quick else 'default'} {asdict(size)}", flush=True)
    per_seed = []
    for seed in seeds:
        print(f"seed {seed}", flush=True)
        per_seed.append(run_seed(size, seed, model, processor, a.gate, not a.no_grpo))
    summary = summarize(per_seed, a.gate)
    timings: dict[str, float] = {}
    for r in per_seed:
        for k, v in r["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.time() - start - t_base
    (out / "results.json").write_text(json.dumps({"size": asdict(size), "per_seed": per_seed, "summary": summary},
                                                 indent=1, default=str))  # fmt: skip
    text = markdown(summary, seeds, seconds, base_info, timings)
    (out / "results.md").write_text(text)
    print(text)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
