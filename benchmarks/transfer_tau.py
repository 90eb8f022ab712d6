"""Transfer benchmark on the toy world: does DataProphet's training-free M(s→t) rank sources like real fine-tuning?

The DataProphet paper (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1) fine-tunes a
base VLM on each of 14 datasets and measures the relative change of every target's accuracy,
`Δ(s→t) = (acc_t after training on s − base acc_t) / base acc_t`; the Kendall tau between M and Δ is 0.860
(mean of the per-target 0.863 and the per-source 0.857). This script runs the same protocol on the toy world:

1. build a LLaVA somewhat larger than the test zoo's (CLIP tower 64 wide, Llama 128 wide x 4 layers, ~1M params:
   the zoo's 0.2M model learns too little) with the zoo's tokenizer and processor;
2. **pre-train** it briefly on a mix of all seven toy families (the "base model": every target above chance, room
   to improve);
3. **fine-tune** a copy on each toy source (one family's train rows) and measure exact-match accuracy (greedy
   generation) on each family's test split → `accuracy.csv`, `delta.csv` (Δ in %);
4. **score** the same sources for the same targets with DataProphet under the base model (targets: each family's
   *validation* split, so the metric never sees the test rows) → `metric.csv`, term matrices, heatmap;
5. **tau** per target, per source and headline for the full metric and each of the paper's ablations (and with an
   external sentence-transformers text encoder) → `tau.json`, `results.md`;
6. **allocation**: train the base model on a fixed budget drawn from all sources with uniform, proportional (Alg. 1)
   and sharpened allocations for all seven targets at once, and compare the mean target accuracy.

usage:
    python benchmarks/transfer_tau.py [--small] [--out DIR] [--seed N] [--no-allocation]

`--small` runs a reduced configuration in a few minutes (a smoke test of the pipeline; its taus are noisy). The
default configuration takes about 3 minutes on 2 idle CPU cores (about 10 minutes when the cores are shared with
other jobs), well under the 45-minute limit; `--set FIELD=VALUE ...` overrides any size (e.g. a GPU-sized run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mixwise.dataprophet import ABLATIONS, PAPER_ABLATION_TAU, DataProphet, DataProphetConfig  # noqa: E402
from mixwise.dataprophet.tau import Matrix, evaluate_tau  # noqa: E402
from mixwise.plan import Plan  # noqa: E402
from mixwise.signals.embeddings import bundled_text_encoder_path  # noqa: E402
from mixwise.signals.encoding import encode_rows, tokenizer_of  # noqa: E402
from mixwise.toy import FAMILIES, make_source, transfer_structure  # noqa: E402

PAPER = {"mean_target": 0.863, "mean_source": 0.857, "headline": 0.860}


@dataclass
class Size:
    """One benchmark configuration (rows are per family)."""

    pretrain_rows: int = 600
    pretrain_epochs: int = 5
    pretrain_lr: float = 1e-3
    finetune_rows: int = 300
    finetune_epochs: int = 3
    finetune_lr: float = 5e-4
    test_rows: int = 200
    validation_rows: int = 100
    subsample: int = 100
    batch_size: int = 16
    allocation_budget: int = 700
    text_hidden: int = 128
    text_layers: int = 4
    vision_hidden: int = 64


DEFAULT = Size()
SMALL = Size(
    pretrain_rows=150,
    pretrain_epochs=4,
    finetune_rows=100,
    finetune_epochs=2,
    test_rows=60,
    validation_rows=40,
    subsample=40,
    allocation_budget=280,
)


# ----------------------------------------------------------------------------------------------------------------
# model, training, evaluation
# ----------------------------------------------------------------------------------------------------------------


def build_model(size: Size, seed: int):
    """A LLaVA bigger than the zoo's tiny one, with the zoo's tokenizer, processor and chat template."""
    from mixwise.testing import build_llava

    model, processor = build_llava(
        seed=seed,
        vision_hidden=size.vision_hidden,
        vision_layers=2,
        vision_heads=4,
        vision_intermediate=2 * size.vision_hidden,
        text_hidden=size.text_hidden,
        text_layers=size.text_layers,
        text_heads=4,
        text_kv_heads=4,
        text_intermediate=2 * size.text_hidden,
        name="transfer-tau-llava",
    )
    return model.eval(), processor


def train(model, processor, rows: list[dict], epochs: int, lr: float, batch_size: int, seed: int, desc: str):
    """Plain full fine-tuning (AdamW, linear decay), loss on answer tokens only (the spine's `encode_rows`)."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(rows) / batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: max(0.05, 1 - k / max(1, steps)))
    model.train()
    losses = []
    bar = tqdm(total=steps, desc=desc, leave=False)
    for _ in range(epochs):
        order = list(range(len(rows)))
        rng.shuffle(order)
        for k in range(0, len(order), batch_size):
            batch = encode_rows([rows[i] for i in order[k : k + batch_size]], processor)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    model.eval()
    return float(np.mean(losses[-10:]))


def normalize_answer(text: str) -> str:
    return text.strip().strip(".").strip().lower()


@torch.no_grad()
def accuracy(model, processor, rows: list[dict], batch_size: int = 64) -> float:
    """Exact match (case- and surrounding-space-insensitive) of greedy generations against the reference answer."""
    tok = tokenizer_of(processor)
    old = tok.padding_side
    tok.padding_side = "left"
    correct = 0
    try:
        for k in range(0, len(rows), batch_size):
            chunk = rows[k : k + batch_size]
            prompts = [
                processor.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True)
                for r in chunk
            ]
            inputs = processor(
                text=prompts,
                images=[r["images"] for r in chunk],
                padding=True,
                return_tensors="pt",
                add_special_tokens=False,
            )
            out = model.generate(**inputs, max_new_tokens=5, do_sample=False)
            texts = tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for r, text in zip(chunk, texts):
                answer = r["messages"][-1]["content"][-1]["text"]
                correct += normalize_answer(text) == normalize_answer(answer)
    finally:
        tok.padding_side = old
    return correct / len(rows)


def accuracies(model, processor, tests: dict[str, list[dict]]) -> dict[str, float]:
    return {t: accuracy(model, processor, rows) for t, rows in tests.items()}


def relative_delta(acc: float, base: float) -> float:
    """Δ in % (the paper's relative improvement); an absolute change in points when the base accuracy is 0."""
    return 100.0 * (acc - base) / base if base > 0 else 100.0 * (acc - base)


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="reduced configuration (a few minutes)")
    p.add_argument("--out", default="benchmarks/out/transfer_tau", help="output directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--no-allocation", action="store_true", help="skip the allocation (sharpening) experiment")
    p.add_argument(
        "--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override sizes, e.g. pretrain_rows=600"
    )
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    size = SMALL if a.small else DEFAULT
    if a.set:
        types = {f: type(v) for f, v in asdict(size).items()}
        overrides = {}
        for item in a.set:
            key, _, value = item.partition("=")
            if key not in types:
                p.error(f"unknown size field {key!r}; fields: {sorted(types)}")
            overrides[key] = types[key](value)
        size = replace(size, **overrides)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_all = time.time()
    families = list(FAMILIES)
    print(f"transfer_tau: {'small' if a.small else 'default'} configuration {asdict(size)}", flush=True)

    # data: pre-training mix, fine-tuning sources, targets (validation for the metric, test for accuracy)
    t0 = time.time()
    pretrain = [r for f in families for r in make_source(f, size.pretrain_rows, "train", seed=a.seed + 100)]
    sources = {f: make_source(f, size.finetune_rows, "train", seed=a.seed) for f in families}
    validation = {f: make_source(f, size.validation_rows, "validation", seed=a.seed) for f in families}
    tests = {f: list(make_source(f, size.test_rows, "test", seed=a.seed)) for f in families}
    source_rows = {f: list(ds) for f, ds in sources.items()}
    timings["data"] = time.time() - t0

    # 1-2. base model
    t0 = time.time()
    model, processor = build_model(size, a.seed)
    n_params = sum(p.numel() for p in model.parameters())
    loss = train(
        model, processor, pretrain, size.pretrain_epochs, size.pretrain_lr, size.batch_size, a.seed, "pre-training"
    )
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    base_acc = accuracies(model, processor, tests)
    timings["pretrain"] = time.time() - t0
    print(f"base model ({n_params / 1e6:.2f}M params, final loss {loss:.3f}): {_fmt(base_acc)}", flush=True)

    # 3. DataProphet on the base model (before anything else touches it)
    t0 = time.time()
    settings = DataProphetConfig(subsample=size.subsample, seed=a.seed, progress=False)
    selector = DataProphet(settings)
    result = selector.score(sources, validation, model, processor, model_id=f"transfer-tau-base-{a.seed}")
    result.save(out / "dataprophet")
    timings["dataprophet"] = time.time() - t0
    minilm = None
    try:
        st = DataProphet(
            DataProphetConfig(
                subsample=size.subsample,
                seed=a.seed,
                progress=False,
                text_encoder=bundled_text_encoder_path(),
            )
        )
        st.computer.memory = selector.computer.memory  # reuse the perplexity and image signals
        minilm = st.score(sources, validation, model, processor, model_id=f"transfer-tau-base-{a.seed}")
    except ImportError as err:
        print(f"(skipping the sentence-transformers variant: {err})")

    # 4. fine-tune a copy of the base on each source, measure every target
    t0 = time.time()
    acc_rows = {"base": base_acc}
    for k, s in enumerate(families):
        model.load_state_dict(base_state)
        train(
            model,
            processor,
            source_rows[s],
            size.finetune_epochs,
            size.finetune_lr,
            size.batch_size,
            a.seed + 1 + k,
            f"fine-tune {s}",
        )
        acc_rows[s] = accuracies(model, processor, tests)
        print(f"after {s:<8}: {_fmt(acc_rows[s])}", flush=True)
    timings["finetune"] = time.time() - t0
    accuracy_m = Matrix(["base", *families], families, [[acc_rows[r][t] for t in families] for r in acc_rows])
    accuracy_m.to_csv(out / "accuracy.csv")
    delta = Matrix(
        families, families, [[relative_delta(acc_rows[s][t], base_acc[t]) for t in families] for s in families]
    )
    delta.to_csv(out / "delta.csv")

    # 5. tau of the full metric and of each ablation
    taus = {name: evaluate_tau(result.metric(terms), delta) for name, terms in ABLATIONS.items()}
    extra_taus = {
        "full, diagonal excluded": evaluate_tau(result.metric(), delta, exclude_diagonal=True),
        "mixwise default (allocation_metric)": evaluate_tau(result.allocation_metric(), delta),
    }
    # against the world's known transfer structure (Jaccard overlap of the families' sub-skills)
    _, jaccard = transfer_structure(families)
    known = Matrix(families, families, jaccard)
    known_taus = {
        "paper M vs known structure": evaluate_tau(result.metric(), known),
        "mixwise default vs known structure": evaluate_tau(result.allocation_metric(), known),
        "measured Δ vs known structure": evaluate_tau(delta, known),
    }
    if minilm is not None:
        extra_taus["full, MiniLM text encoder"] = evaluate_tau(minilm.metric(), delta)
    result.metric().to_csv(out / "metric.csv")

    # 6. allocation: uniform vs proportional vs sharpened, one budget over all sources, all targets at once
    alloc = {}
    if not a.no_allocation:
        t0 = time.time()
        sizes = {s: len(source_rows[s]) for s in families}
        rules = {
            "uniform": {s: 1.0 for s in families},
            "proportional (Alg. 1)": result.weights(),
        }
        for label, cfg in (
            ("power 4", {"sharpen": "power", "power": 4.0}),
            ("temperature 0.05", {"sharpen": "temperature", "temperature": 0.05}),
        ):
            sharp = DataProphet(DataProphetConfig(subsample=size.subsample, seed=a.seed, progress=False, **cfg))
            sharp.computer.memory = selector.computer.memory
            r = sharp.score(sources, validation, model, processor, model_id=f"transfer-tau-base-{a.seed}")
            rules[f"sharpened, {label}"] = r.weights()
        for k, (label, weights) in enumerate(rules.items()):
            plan = Plan.from_weights(weights, sizes, size.allocation_budget, seed=a.seed)
            rows = [source_rows[s][int(i)] for s, ids in plan.resolve()[0].items() for i in ids]
            model.load_state_dict(base_state)
            train(
                model,
                processor,
                rows,
                size.finetune_epochs,
                size.finetune_lr,
                size.batch_size,
                a.seed + 50 + k,
                f"allocation {label}",
            )
            acc = accuracies(model, processor, tests)
            alloc[label] = {
                "counts": plan.counts,
                "accuracy": acc,
                "mean_accuracy": float(np.mean(list(acc.values()))),
            }
            print(
                f"allocation {label:<28}: mean acc {alloc[label]['mean_accuracy']:.3f} counts {plan.counts}",
                flush=True,
            )
        timings["allocation"] = time.time() - t0
    timings["total"] = time.time() - t_all

    summary = {
        "configuration": ("small" if a.small else "default") + (f" with {' '.join(a.set)}" if a.set else ""),
        "size": asdict(size),
        "seed": a.seed,
        "params": n_params,
        "base_accuracy": base_acc,
        "tau": {k: v.to_dict() for k, v in taus.items()},
        "tau_extra": {k: v.to_dict() for k, v in extra_taus.items()},
        "tau_known": {k: v.to_dict() for k, v in known_taus.items()},
        "paper": {"tau": PAPER, "ablation_tau": PAPER_ABLATION_TAU},
        "allocation": alloc,
        "timings_s": timings,
        "torch_threads": torch.get_num_threads(),
    }
    (out / "tau.json").write_text(json.dumps(summary, indent=2))
    md = _markdown(summary, result, delta)
    (out / "results.md").write_text(md)
    print(md)
    return summary


def _fmt(acc: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in acc.items())


def _markdown(summary: dict, result, delta: Matrix) -> str:
    lines = [
        f"### Toy-world transfer benchmark ({summary['configuration']} configuration, seed {summary['seed']})",
        "",
        f"LLaVA with {summary['params'] / 1e6:.2f}M parameters, {summary['torch_threads']} CPU threads, "
        f"total {summary['timings_s']['total'] / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f}s' for k, v in summary['timings_s'].items() if k != 'total')}).",
        "",
        "Base accuracy (exact match, test split): "
        + ", ".join(f"{k} {v:.2f}" for k, v in summary["base_accuracy"].items()),
        "",
        "| metric | tau per target | tau per source | headline | paper (headline) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, t in summary["tau"].items():
        paper = summary["paper"]["ablation_tau"].get(name)
        lines.append(
            f"| {name} | {t['mean_target']:.3f} | {t['mean_source']:.3f} | {t['headline']:.3f} | "
            f"{'' if paper is None else f'{paper:.3f}'} |"
        )
    for name, t in summary["tau_extra"].items():
        lines.append(f"| {name} | {t['mean_target']:.3f} | {t['mean_source']:.3f} | {t['headline']:.3f} | |")
    lines += [
        "",
        "Against the known transfer structure (`mixwise.toy.transfer_structure`, goal: headline >= 0.6):",
        "",
    ]
    lines += ["| ranking | tau per target | tau per source | headline |", "|---|---:|---:|---:|"]
    for name, t in summary["tau_known"].items():
        lines.append(f"| {name} | {t['mean_target']:.3f} | {t['mean_source']:.3f} | {t['headline']:.3f} |")
    lines += ["", "Paper (14 datasets, InternVL3-2B): per target 0.863, per source 0.857, headline 0.860.", ""]
    if summary["allocation"]:
        lines += ["| allocation of the budget | mean target accuracy | rows per source |", "|---|---:|---|"]
        for label, r in summary["allocation"].items():
            counts = ", ".join(f"{k} {v}" for k, v in r["counts"].items())
            lines.append(f"| {label} | {r['mean_accuracy']:.3f} | {counts} |")
        lines.append("")
    lines += ["Measured Δ (relative change of target accuracy, %; rows: fine-tuning source, columns: target):", ""]
    lines += ["```", f"{'':<9}" + "".join(f"{t:>9}" for t in delta.cols)]
    lines += [f"{s:<9}" + "".join(f"{v:>9.1f}" for v in row) for s, row in zip(delta.rows, delta.values)]
    lines += ["```", "", "DataProphet M(source → target) under the base model:", "", "```"]
    m = result.metric()
    lines += [f"{'':<9}" + "".join(f"{t:>9}" for t in m.cols)]
    lines += [f"{s:<9}" + "".join(f"{v:>9.4f}" for v in row) for s, row in zip(m.rows, m.values)]
    lines += ["```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
