"""The code behind `mixwise sft` and `mixwise grpo`: SFT and GRPO on a selected mixture, in TRL's script conventions.

A recipe is a YAML file parsed by TRL's parser into four dataclasses — [`MixtureArguments`] (what to train on),
TRL's `SFTConfig` / `GRPOConfig`, `trl.ModelConfig` (model path, `dtype`, `attn_implementation`, 4/8-bit
quantization, LoRA through `trl.get_peft_config`) and `trl.DatasetMixtureConfig` (TRL's `datasets:` entries, an
alternative to `sources`) — with command-line overrides, so every TRL and model option works as in `trl sft`:

```bash
mixwise sft --config sft_uniform.yaml --budget 256                        # a shipped recipe (`mixwise recipes`)
mixwise sft --config my.yaml --resume_from_checkpoint true                # continue the last checkpoint
accelerate launch --config_file multi_gpu.yaml -m mixwise.cli sft --config sft_dataprophet.yaml
```

The run, in order: the whole configuration is checked (method, selector options, budget, metrics, rewards,
checkpoint) before anything is loaded; then the processor, the data (validated), the mixture; TRL's trainer loads
the model exactly as `trl sft` does (`model_init_kwargs` from `ModelConfig`). With no model or data given, recipes
run on the embedded default — the tiny LLaVA (random weights) and the toy world.

At the end, the main process writes `selection.json` (by the selection callback), the model, `trainer_state.json`,
`consumed.json` (rows actually collated, per source, summed over ranks and across resumes) and `report.html` into
`output_dir`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets

from ..distributed import shutdown
from .arguments import TOY, MixtureArguments, RecipeChecks, check_recipe, check_targets_named

__all__ = [
    "RecipeRun",
    "build_mixture",
    "dataset_entry_name",
    "dataset_fractions",
    "load_pool_and_targets",
    "main_grpo",
    "main_sft",
    "model_init_kwargs",
    "parse",
    "prepare_run",
    "resolve_budget",
    "resolve_model_path",
    "run_grpo",
    "run_sft",
    "train_on_mixture",
]


@dataclass
class RecipeRun:
    """What SFT and GRPO runs share once prepared: nothing of it is the model, which the trainer loads."""

    checks: RecipeChecks
    model_path: str
    processor: Any
    targets: dict[str, Any]
    mixture: Any


def dataset_entry_name(entry: Any) -> str:
    """The source name of a TRL `datasets:` entry: its config name, else the last part of its path."""
    return entry.name or os.path.basename(os.path.normpath(entry.path))


def dataset_fractions(dataset_args: Any) -> dict[str, float] | None:
    """The `fraction`s of TRL's `datasets:` entries, by source name (None when no entry sets one)."""
    entries = list(getattr(dataset_args, "datasets", None) or [])
    fractions = {dataset_entry_name(e): float(e.fraction) for e in entries if e.fraction is not None}
    if fractions and len(fractions) != len(entries):
        raise ValueError("recipe field `datasets`: set `fraction` for every entry or for none")
    return fractions or None


def _pool_from_datasets(dataset_args: Any) -> dict[str, datasets.Dataset]:
    """TRL's `datasets:` entries as named sources ([`dataset_entry_name`]), each loaded with
    `datasets.load_dataset` as `trl.get_dataset` does (a single `save_to_disk` Dataset with `load_from_disk`)."""
    if dataset_args.streaming:
        raise ValueError("recipe field `streaming`: a mixture needs indexable datasets (streaming is not supported)")
    pool: dict[str, datasets.Dataset] = {}
    for entry in dataset_args.datasets:
        name = dataset_entry_name(entry)
        if name in pool:
            raise ValueError(f"recipe field `datasets`: two entries are named {name!r}; give them distinct names")
        if os.path.isdir(entry.path) and os.path.isfile(os.path.join(entry.path, "dataset_info.json")):
            ds = datasets.load_from_disk(entry.path)  # a single save_to_disk Dataset, which load_dataset refuses
        else:
            ds = datasets.load_dataset(
                entry.path, name=entry.name, data_dir=entry.data_dir, data_files=entry.data_files, split=entry.split
            )
        if entry.columns is not None:
            ds = ds.select_columns(entry.columns)
        pool[name] = ds
    return pool


def load_pool_and_targets(
    args: MixtureArguments, fmt: str, dataset_args: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`({name: Dataset}, {name: Dataset})` of the pool and the targets (the toy world when none are given)."""
    from ..sources import load_sources
    from ..toy import FAMILIES, make_source

    families = list(args.toy_families or FAMILIES)
    seed = 0
    from_datasets = dataset_args is not None and bool(dataset_args.datasets)
    if from_datasets and args.sources:
        raise ValueError("recipe fields `sources` and `datasets`: give the pool one way, not both")
    if from_datasets:
        pool = _pool_from_datasets(dataset_args)
    elif args.sources:  # the same data twice is refused, not merged
        pool = {s.name: s.dataset for s in load_sources(args.sources, split=args.source_split)}
    else:
        pool = {f: make_source(f, args.toy_n_train, split="train", seed=seed, fmt=fmt) for f in families}
    if args.targets:
        targets = {t.name: t.dataset for t in load_sources(args.targets, split=args.target_split, role="target")}
    elif not args.sources and not from_datasets:
        targets = {f: make_source(f, args.toy_n_target, split="validation", seed=seed, fmt=fmt) for f in families}
    else:
        targets = {}
    return pool, targets


def resolve_budget(args: MixtureArguments, pool_size: int) -> int:
    """The budget in rows: `budget`, else `round(budget_ratio × pool size)` (at least 1)."""
    from ..plan import check_budget

    if args.budget is not None:
        return check_budget(args.budget)
    if args.budget_ratio is not None:
        if not 0 < args.budget_ratio <= 1:
            raise ValueError(f"budget_ratio must be in (0, 1], got {args.budget_ratio}")
        return max(1, round(args.budget_ratio * pool_size))
    raise ValueError("set `budget` (rows) or `budget_ratio` (fraction of the pool)")


def resolve_model_path(model_args: Any, output_dir: str, seed: int) -> str:
    """The model path; for 'toy' (or none), the main process writes the tiny LLaVA and the other ranks wait."""
    name = getattr(model_args, "model_name_or_path", None) or TOY
    if name != TOY:
        return name
    from accelerate import PartialState

    from ..testing import save_tiny_model

    path = Path(output_dir) / "base_model"
    with PartialState().main_process_first():
        if not (path / "config.json").exists():
            save_tiny_model("llava", path, seed=seed)
    return str(path)


def model_init_kwargs(model_args: Any, training_args: Any) -> dict[str, Any]:
    """`from_pretrained` keywords from `ModelConfig`, as TRL's own `trl sft` / `trl grpo` scripts build them
    (the trainer's `model_init_kwargs` override them)."""
    kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=getattr(training_args, "trust_remote_code", False),
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if model_args.load_in_4bit or model_args.load_in_8bit:
        from trl import get_kbit_device_map

        kwargs["device_map"] = get_kbit_device_map()
    kwargs.update(training_args.model_init_kwargs or {})
    return kwargs


def build_mixture(args: MixtureArguments, training_args: Any, pool: dict[str, Any], processor: Any) -> Any:
    """The one place a recipe builds its `Mixture`: validated rows, the budget, the run's seed. Validation gets the
    processor and `max_length` the trainer will use (SFT truncates to `training_args.max_length`; GRPO has no prompt
    truncation), so every row the training stack would reject is named before the model is loaded."""
    from ..mixture import Mixture

    return Mixture(
        pool,
        budget=resolve_budget(args, sum(map(len, pool.values()))),
        seed=training_args.seed,
        validate=args.validate,
        processing_class=processor,
        max_length=getattr(training_args, "max_length", None),  # SFTConfig's; GRPOConfig has none
    )


def prepare_run(
    args: MixtureArguments, training_args: Any, model_args: Any, kind: str, dataset_args: Any = None
) -> RecipeRun:
    """Check the configuration, then load the processor, the data and the mixture — everything but the model,
    which the trainer loads. A misspelled method or option fails here, before anything is loaded."""
    from ..models import load_processing_class

    checks = check_recipe(args, training_args, kind)
    if dataset_args is not None and dataset_args.datasets and args.sources:
        raise ValueError("recipe fields `sources` and `datasets`: give the pool one way, not both")
    fractions = dataset_fractions(dataset_args)
    if fractions:
        if args.method not in ("uniform", "fixed_weights"):
            raise ValueError(
                "recipe field `datasets`: `fraction`s are fixed weights; use method fixed_weights (or uniform), "
                f"not {args.method!r}"
            )
        from ..selectors import FixedWeights

        checks.selector = FixedWeights(fractions)
    training_args.resume_from_checkpoint = checks.resume_from
    model_path = resolve_model_path(model_args, training_args.output_dir, training_args.seed)
    processor = load_processing_class(model_path)
    pool, targets = load_pool_and_targets(args, fmt="sft" if kind == "sft" else "rl", dataset_args=dataset_args)
    check_targets_named(checks.metric_kinds, targets)
    mixture = build_mixture(args, training_args, pool, processor)
    return RecipeRun(checks=checks, model_path=model_path, processor=processor, targets=targets, mixture=mixture)


def _train_dataset(run: RecipeRun, args: MixtureArguments) -> datasets.Dataset:
    from ..consumption import ROW_COLUMN

    dataset = run.mixture.dataset
    if args.record_rows:
        dataset = dataset.add_column(ROW_COLUMN, list(range(len(dataset))))
    return dataset


def _add_watchers(trainer: Any, run: RecipeRun, args: MixtureArguments, training_args: Any, kind: str) -> None:
    from .metrics import TargetMetricsCallback
    from .probes import ProbeLossCallback

    if run.targets and kind == "sft" and args.probe_rows > 0:
        probes = {n: ds.select(range(min(args.probe_rows, len(ds)))) for n, ds in run.targets.items()}
        trainer.add_callback(ProbeLossCallback(probes, run.processor, trainer=trainer))
    if run.targets and args.metric_rows > 0:
        trainer.add_callback(
            TargetMetricsCallback(
                run.targets,
                run.processor,
                metrics=run.checks.metric_kinds,
                rows=args.metric_rows,
                max_new_tokens=args.metric_max_new_tokens,
                trainer=trainer,
            )
        )


def train_on_mixture(trainer: Any, run: RecipeRun, args: MixtureArguments, training_args: Any, kind: str):
    """Attach the mixture and its selector to `trainer`, count what is collated (from the resumed checkpoint's
    totals on), train, and finish the run."""
    from ..consumption import ConsumptionCheckpointCallback, ConsumptionLog, read_consumption
    from ..trainer import attach
    from .training import SourceLossCallback

    attach(trainer, run.mixture, selector=run.checks.selector, targets=run.targets, model_id=run.model_path)
    loss_by_source = kind == "sft" and args.loss_by_source
    log = ConsumptionLog(
        trainer.data_collator, run.mixture, record_rows=args.record_rows, base=read_consumption(run.checks.resume_from)
    )
    trainer.data_collator = log
    trainer.mixwise_consumption = log
    trainer.add_callback(ConsumptionCheckpointCallback(log))
    if loss_by_source:
        trainer.mixwise_source_names = list(run.mixture.names)
        trainer.add_callback(SourceLossCallback(trainer))
    _add_watchers(trainer, run, args, training_args, kind)
    trainer.train(resume_from_checkpoint=run.checks.resume_from)
    return _finish(trainer, run, log, args)


def _finish(trainer: Any, run: RecipeRun, log: Any, args: MixtureArguments) -> dict[str, Any]:
    import json

    from ..consumption import CONSUMED_NAME, gather_consumption

    trainer.save_model()
    result = gather_consumption(log)
    result["planned"] = run.mixture.plan.counts
    if run.checks.resume_from:
        result["resumed_from"] = run.checks.resume_from
    if trainer.is_world_process_zero():
        trainer.save_state()
        out = Path(trainer.args.output_dir)
        (out / CONSUMED_NAME).write_text(json.dumps(result, indent=2))
        from ..extras import available

        if args.report and available("matplotlib", "report.html"):
            from ..report import build_report

            result["report"] = str(build_report(out))
    return result


def _recipe_trainer(base: type, loss_by_source: bool) -> type:
    from .training import recipe_trainer_class

    return recipe_trainer_class(base, loss_by_source=loss_by_source)


def run_sft(args: MixtureArguments, training_args: Any, model_args: Any = None, dataset_args: Any = None):
    """SFT with TRL's SFTTrainer on the mixture the selector plans (vision or text models)."""
    from trl import ModelConfig, SFTTrainer, get_peft_config, get_quantization_config

    model_args = model_args or ModelConfig()
    training_args.remove_unused_columns = False  # keep `source` for per-source accounting
    run = prepare_run(args, training_args, model_args, "sft", dataset_args)
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = _recipe_trainer(SFTTrainer, args.loss_by_source)(
        model=run.model_path,
        args=training_args,
        train_dataset=_train_dataset(run, args),
        processing_class=run.processor,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    return train_on_mixture(trainer, run, args, training_args, "sft")


def run_grpo(args: MixtureArguments, training_args: Any, model_args: Any = None, dataset_args: Any = None):
    """GRPO with TRL's GRPOTrainer: the selector allocates the prompt budget across sources; rewards are logged
    per source."""
    from trl import GRPOTrainer, ModelConfig, get_peft_config, get_quantization_config

    from ..rewards import per_source

    model_args = model_args or ModelConfig()
    run = prepare_run(args, training_args, model_args, "grpo", dataset_args)
    training_args.model_init_kwargs = model_init_kwargs(model_args, training_args)
    trainer = _recipe_trainer(GRPOTrainer, False)(
        model=run.model_path,
        reward_funcs=[per_source(fn) for fn in run.checks.reward_funcs],
        args=training_args,
        train_dataset=_train_dataset(run, args),
        processing_class=run.processor,
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    return train_on_mixture(trainer, run, args, training_args, "grpo")


def parse(config_cls: type, argv=None) -> tuple:
    """`(MixtureArguments, config_cls instance, ModelConfig, DatasetMixtureConfig)` from a command line / YAML
    (`--config NAME` may name a shipped recipe, see `mixwise recipes`)."""
    from trl import DatasetMixtureConfig, ModelConfig, TrlParser

    from .shipped import resolve_config_argument

    parser = TrlParser(dataclass_types=[MixtureArguments, config_cls, ModelConfig, DatasetMixtureConfig])
    return tuple(parser.parse_args_and_config(resolve_config_argument(argv)))


def main_sft(argv=None) -> dict[str, Any]:
    from trl import SFTConfig

    result = run_sft(*parse(SFTConfig, argv))
    shutdown()
    return result


def main_grpo(argv=None) -> dict[str, Any]:
    from trl import GRPOConfig

    result = run_grpo(*parse(GRPOConfig, argv))
    shutdown()
    return result
