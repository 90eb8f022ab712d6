"""An exact export of a plan for any trainer: the plan's rows as a `DatasetDict`, a dataset card, and a TRL YAML that
trains exactly those rows with TRL's own CLI (`trl sft --config DIR/trl_sft.yaml`).

TRL's `datasets:` mixture (`fraction`s) cannot say which rows a plan drew, nor their order, nor that a source is
repeated: it keeps the *first* rows of each dataset and caps the mixture so that none is oversampled
([`mixwise.Plan.to_trl_mixture`] refuses such plans). The export writes the rows themselves instead:

* `DIR/train/` (`DatasetDict({"train": ...})`, `save_to_disk`, which `datasets.load_dataset(DIR)` and TRL read):
  exactly the plan's rows, in the order mixwise's sampler draws them in the first epoch (stage after stage for
  staged plans), each with its provenance — `source` (the source's name), `source_row` (the row's id in that
  source), `stage` (0 unless staged), `position` (its place in the plan's order) — and the method's per-row
  scores where the run has them (`icons_votes`, `icons_influence_<task>`; `cadc_capability`, `cadc_influence`);
* `DIR/README.md`: a dataset card recording the method, budget, seed, weights and counts per source, the stages,
  the fingerprints of the plan's data and model, and how to train on it;
* `DIR/trl_sft.yaml` (SFT rows) or `DIR/trl_grpo.yaml` (RL rows): TRL's `datasets:` entry for `DIR`, one epoch,
  the plan's order (`train_sampling_strategy: sequential` / `shuffle_dataset: false`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np

from .files import atomic_write_text
from .mixture import Mixture
from .plan import MANIFEST_NAME, Plan
from .sources import Source, row_format

__all__ = [
    "PROVENANCE_COLUMNS",
    "ExportResult",
    "export_plan",
    "load_plan",
    "plan_rows",
    "row_scores",
    "trl_config",
]

PROVENANCE_COLUMNS = ("source", "source_row", "stage", "position")


@dataclass
class ExportResult:
    """Where the export wrote what, and what it holds."""

    out: str
    dataset: datasets.Dataset
    paths: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    format: str = "sft"


def load_plan(plan_or_run: str | os.PathLike | Plan) -> tuple[Plan, str | None]:
    """`(plan, directory)` from a `selection.json` file, a run / selection directory holding one, or a plan."""
    if isinstance(plan_or_run, Plan):
        return plan_or_run, None
    path = os.fspath(plan_or_run)
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, MANIFEST_NAME)):
            raise FileNotFoundError(f"{path} has no {MANIFEST_NAME}: not a mixwise run or selection directory")
        return Plan.load(path), path
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no plan at {path!r} (a selection.json file or a directory holding one)")
    return Plan.load(path), os.path.dirname(os.path.abspath(path))


def row_scores(run_dir: str | None, total_size: int) -> dict[str, np.ndarray]:
    """Per-row selection scores a run directory holds, indexed by mixture row (empty when there are none):
    ICONS's votes and per-task influence (`icons_scores.npz`), CADC's capability and its influence
    (`cadc_scores.npz`)."""
    out: dict[str, np.ndarray] = {}
    if run_dir is None:
        return out
    icons = os.path.join(run_dir, "icons_scores.npz")
    if os.path.isfile(icons):
        with np.load(icons, allow_pickle=False) as z:
            if len(z["votes"]) == total_size:
                out["icons_votes"] = np.asarray(z["votes"], dtype=np.int64)
                for j, task in enumerate(z["tasks"].tolist()):
                    out[f"icons_influence_{task}"] = np.asarray(z["scores"][:, j], dtype=np.float32)
    cadc = os.path.join(run_dir, "cadc_scores.npz")
    if os.path.isfile(cadc):
        with np.load(cadc, allow_pickle=False) as z:
            capability = np.asarray(z["capability"], dtype=np.int64)
            if len(capability) == total_size:
                names = z["capabilities"].tolist()
                out["cadc_capability"] = np.array([names[c] if 0 <= c < len(names) else "" for c in capability])
                influence = np.asarray(z["influence"], dtype=np.float32)
                own = np.clip(capability, 0, influence.shape[1] - 1)
                out["cadc_influence"] = influence[np.arange(total_size), own]
    return out


def plan_rows(
    mixture: Mixture, plan: Plan | None = None, scores: Mapping[str, np.ndarray] | None = None
) -> datasets.Dataset:
    """The plan's rows in the sampler's first-epoch order (stage after stage), with the provenance columns and
    `scores` (arrays indexed by mixture row) as columns."""
    if plan is not None:
        mixture.set_plan(plan)
    indices = mixture.indices(epoch=0)
    stage_of = np.concatenate(
        [np.full(sum(len(r) for r in stage.values()), k, dtype=np.int64) for k, stage in enumerate(mixture.rows())]
    )
    rows = mixture.dataset.select(indices)
    located = [mixture.locate(int(i)) for i in indices]
    columns: dict[str, Any] = {
        "source_row": [r for _, r in located],
        "stage": stage_of.tolist(),
        "position": list(range(len(indices))),
    }
    for name, values in (scores or {}).items():
        columns[name] = np.asarray(values)[indices].tolist()
    for name, values in columns.items():
        if name in rows.column_names:
            rows = rows.remove_columns(name)
        rows = rows.add_column(name, values)
    return rows


def trl_config(out: str, fmt: str, model: str | None, rows: int, output_dir: str | None = None) -> tuple[str, str]:
    """`(file name, YAML text)` of the TRL config that trains exactly the exported rows."""
    name = "trl_sft.yaml" if fmt == "sft" else "trl_grpo.yaml"
    command = "trl sft" if fmt == "sft" else "trl grpo"
    config: dict[str, Any] = {
        "model_name_or_path": model,
        "datasets": [{"path": os.path.abspath(out), "split": "train"}],
        "output_dir": output_dir or os.path.abspath(out) + ("-sft" if fmt == "sft" else "-grpo"),
        "num_train_epochs": 1,
        "max_steps": -1,
    }
    if fmt == "sft":
        config.update(train_sampling_strategy="sequential", packing=False, dataloader_drop_last=False)
    else:
        config.update(shuffle_dataset=False, reward_funcs=["mixwise.rewards.exact_match"])
    import yaml

    head = [
        f"# Trains exactly the {rows} rows of {os.path.abspath(out)} (the plan's rows, in the plan's order) with TRL's",
        f"# own CLI:  {command} --config {os.path.join(os.path.abspath(out), name)}",
        "# Keep num_train_epochs 1, max_steps -1 and the order setting below; set batch size, learning rate, ... as usual.",
    ]
    if fmt == "sft":
        head.append("# On N processes, make the row count a multiple of N x per_device_train_batch_size: accelerate")
        head.append("# pads the last uneven batch with repeated rows.")
    else:
        head.append("# GRPO drops an incomplete last generation batch: make the row count a multiple of")
        head.append("# per_device_train_batch_size x processes / num_generations (prompts per generation batch).")
    if model is None:
        head.append("# Set model_name_or_path (the plan does not name a local model).")
    return name, "\n".join(head) + "\n" + yaml.safe_dump(config, sort_keys=False)


def _card(plan: Plan, result: ExportResult, fingerprints: dict[str, str], trl_file: str, command: str) -> str:
    rows = "\n".join(
        f"| {n} | {s.weight:.4f} | {result.counts.get(n, 0)} | {s.size} | {'yes' if s.repeated else ''} |"
        for n, s in plan.sources.items()
    )
    stages = ""
    if plan.stages:
        names = list(plan.sources)
        stages = "\n## Stages (trained in this order)\n\n| stage | rows | " + " | ".join(names) + " |\n"
        stages += "|---|---:|" + "---:|" * len(names) + "\n"
        for k, st in enumerate(plan.stages):
            label = st.extra.get("capability", k) if st.extra else k
            stages += f"| {k}: {label} | {st.budget} | " + " | ".join(str(st.sources[n].count) for n in names) + " |\n"
    data_fp = (plan.fingerprints or {}).get("data", {})
    fp_rows = "\n".join(f"| {n} | {data_fp.get(n, '')} | {fingerprints.get(n, '')} |" for n in plan.sources)
    extra_cols = [c for c in result.dataset.column_names if c.startswith(("icons_", "cadc_"))]
    return f"""---
tags:
- mixwise
- data-selection
---

# mixwise export: {plan.method}, {plan.budget} rows

The rows a mixwise plan trains on — exactly them, in the order mixwise's sampler draws them in the first epoch
{"(stage after stage)" if plan.stages else ""} — as a `DatasetDict` with one `train` split.

- method: `{plan.method}`
- budget: {plan.budget} rows
- seed: {plan.seed}
- mixwise: {plan.version}
- model the plan was made with: `{(plan.fingerprints or {}).get("model")}`

## Per source

| source | weight | rows | size | repeats |
|---|---:|---:|---:|---|
{rows}
{stages}
## Columns

Every column of the sources, plus the provenance of each row: `source` (the source's name), `source_row` (the
row's id in that source), `stage` (its curriculum stage, 0 when not staged) and `position` (its place in the
plan's order){"; the method's per-row scores: " + ", ".join(f"`{c}`" for c in extra_cols) if extra_cols else ""}.

## Fingerprints

| source | when planned | exported from |
|---|---|---|
{fp_rows}

## Train on it

```bash
{command} --config {trl_file}
```

The YAML trains one epoch over these rows in their order; TRL's `fraction` mixtures could not express them
(they keep the first rows of each dataset).

## Configuration of the method

```json
{json.dumps(plan.config, indent=2, default=str)}
```
"""


def export_plan(
    plan_or_run: str | os.PathLike | Plan,
    sources: Mapping[str, datasets.Dataset] | Sequence[Source],
    out: str | os.PathLike,
    model: str | None = None,
    output_dir: str | None = None,
    overwrite: bool = False,
) -> ExportResult:
    """Write the plan's rows, a dataset card and a TRL YAML into `out` (see the module docstring).

    Args:
        plan_or_run: a `selection.json`, a directory holding one (its per-row score files are read too), or a plan.
        sources: the plan's sources (same names and sizes).
        out: the export directory.
        model: `model_name_or_path` for the TRL YAML (default: the plan's model when it is a local directory).
        output_dir: the TRL run's `output_dir` (default: `OUT-sft` / `OUT-grpo`).
        overwrite: replace an existing export.
    """
    plan, run_dir = load_plan(plan_or_run)
    out = os.fspath(out)
    if os.path.exists(os.path.join(out, "dataset_dict.json")) and not overwrite:
        raise FileExistsError(f"{out} already holds an export; pass overwrite=True to replace it")
    validate = "skip" if plan.skipped else False  # drop the rows the planned run dropped, so that sizes match
    mixture = Mixture(sources, budget=plan.budget, seed=plan.seed, validate=validate)
    missing = [n for n in plan.sources if n not in mixture.sizes]
    unknown = [n for n in mixture.sizes if n not in plan.sources]
    if missing or unknown:
        raise ValueError(f"the sources do not match the plan: missing {missing}, not in the plan {unknown}")
    dataset = plan_rows(mixture, plan, scores=row_scores(run_dir, mixture.total_size))
    fmt = row_format(dataset.column_names)
    os.makedirs(out, exist_ok=True)
    datasets.DatasetDict({"train": dataset}).save_to_disk(out)
    counts: dict[str, int] = {}
    for name in dataset["source"]:
        counts[name] = counts.get(name, 0) + 1
    if model is None:
        planned_model = (plan.fingerprints or {}).get("model")
        model = planned_model if isinstance(planned_model, str) and os.path.isdir(planned_model) else None
    result = ExportResult(out=out, dataset=dataset, counts=counts, format=fmt)
    trl_name, trl_text = trl_config(out, fmt, model, len(dataset), output_dir)
    result.paths["trl"] = atomic_write_text(os.path.join(out, trl_name), trl_text)
    command = "trl sft" if fmt == "sft" else "trl grpo"
    card = _card(plan, result, mixture.fingerprints(), result.paths["trl"], command)
    result.paths["card"] = atomic_write_text(os.path.join(out, "README.md"), card)
    result.paths["plan"] = plan.save(os.path.join(out, MANIFEST_NAME))
    result.paths["dataset"] = out
    return result
