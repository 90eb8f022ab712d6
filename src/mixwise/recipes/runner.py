"""The code behind `recipes/*.yaml`: SFT and GRPO on a selected mixture, in TRL's script conventions.

A recipe is a YAML file parsed by TRL's parser into [`MixtureArguments`] plus TRL's own `SFTConfig` or
`GRPOConfig`, with command-line overrides:

```bash
accelerate launch --config_file recipes/accelerate/multi_gpu.yaml recipes/sft.py --config recipes/sft_dataprophet.yaml
python recipes/sft.py --config recipes/sft_uniform.yaml --budget 256          # one process
```

With no model or data given, recipes run on the embedded default — the tiny LLaVA (random weights) and the toy
world — so every recipe runs as shipped. Point them at real data with `model_name_or_path` and `sources` /
`targets` (local `save_to_disk` folders, `name=path` to rename, or hub dataset ids).

At the end, the main process writes `selection.json` (by the selection callback), `trainer_state.json`,
`consumed.json` (rows actually collated, per source, summed over ranks) and `report.html` into `output_dir`.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from ..distributed import shutdown

TOY = "toy"


@dataclass
class MixtureArguments:
    """What to train on: the pool, the targets, the budget and the selection method."""

    model_name_or_path: str = field(
        default=TOY, metadata={"help": "Model path or hub id; 'toy' builds the tiny LLaVA (random weights)."}
    )
    sources: list[str] | None = field(
        default=None,
        metadata={"help": "Pool sources: save_to_disk dirs, 'name=path', or hub ids. Default: the toy world."},
    )
    targets: list[str] | None = field(
        default=None, metadata={"help": "Target validation sets (same forms). Default: the toy world's."}
    )
    source_split: str = field(default="train", metadata={"help": "Split of DatasetDict / hub sources."})
    target_split: str = field(default="validation", metadata={"help": "Split of DatasetDict / hub targets."})
    budget: int | None = field(default=None, metadata={"help": "Rows to train on (one epoch)."})
    budget_ratio: float | None = field(
        default=None, metadata={"help": "Budget as a fraction of the pool (used when budget is not set)."}
    )
    method: str = field(default="uniform", metadata={"help": "Selector: uniform, fixed_weights, random, ..."})
    selector_kwargs: dict[str, Any] | str | None = field(
        default=None, metadata={"help": "Keyword arguments of the selector (a dict in YAML, JSON on the CLI)."}
    )
    validate: str = field(default="raise", metadata={"help": "Row validation: raise or skip (counted)."})
    toy_families: list[str] | None = field(default=None, metadata={"help": "Toy families (default: all)."})
    toy_n_train: int = field(default=64, metadata={"help": "Toy rows per source."})
    toy_n_target: int = field(default=16, metadata={"help": "Toy validation rows per target."})
    probe_rows: int = field(default=8, metadata={"help": "Rows per target for the probe-loss curves (SFT)."})
    reward_funcs: list[str] = field(
        default_factory=lambda: ["mixwise.rewards.exact_match"],
        metadata={"help": "GRPO reward functions by import path."},
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter instead of the full model."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_target_modules: str = field(
        default=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        metadata={"help": "LoRA target modules (a regex or 'all-linear')."},
    )
    report: bool = field(default=True, metadata={"help": "Write report.html at the end."})

    def __post_init__(self):
        if isinstance(self.selector_kwargs, str):
            self.selector_kwargs = json.loads(self.selector_kwargs)


def _named(source) -> tuple[str, datasets.Dataset]:
    return source.name, source.dataset


def load_pool_and_targets(args: MixtureArguments, fmt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`({name: Dataset}, {name: Dataset})` of the pool and the targets (the toy world when none are given)."""
    from ..sources import load_source, load_target
    from ..toy import FAMILIES, make_source

    families = list(args.toy_families or FAMILIES)
    seed = 0
    if args.sources:
        pool = dict(_named(load_source(s, split=args.source_split)) for s in args.sources)
    else:
        pool = {f: make_source(f, args.toy_n_train, split="train", seed=seed, fmt=fmt) for f in families}
    if args.targets:
        targets = dict(_named(load_target(t, args.target_split)) for t in args.targets)
    elif not args.sources:
        targets = {f: make_source(f, args.toy_n_target, split="validation", seed=seed, fmt=fmt) for f in families}
    else:
        targets = {}
    return pool, targets


def resolve_budget(args: MixtureArguments, pool_size: int) -> int:
    if args.budget is not None:
        return int(args.budget)
    if args.budget_ratio is not None:
        if not 0 < args.budget_ratio <= 1:
            raise ValueError(f"budget_ratio must be in (0, 1], got {args.budget_ratio}")
        return max(1, round(args.budget_ratio * pool_size))
    raise ValueError("set `budget` (rows) or `budget_ratio` (fraction of the pool)")


def make_selector(args: MixtureArguments):
    """The selector `args.method` names, with `args.selector_kwargs`."""
    from ..registry import make_selector as by_name

    return by_name(args.method, **(args.selector_kwargs or {}))


def resolve_model_path(args: MixtureArguments, output_dir: str, seed: int) -> str:
    """The model path; for 'toy', the main process writes the tiny LLaVA and the other ranks wait for it."""
    if args.model_name_or_path != TOY:
        return args.model_name_or_path
    from accelerate import PartialState

    from ..testing import save_tiny_model

    path = Path(output_dir) / "base_model"
    with PartialState().main_process_first():
        if not (path / "config.json").exists():
            save_tiny_model("llava", path, seed=seed)
    return str(path)


def _lora(args: MixtureArguments):
    if not args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=args.lora_r, lora_alpha=args.lora_alpha, target_modules=args.lora_target_modules, task_type="CAUSAL_LM"
    )


def _finish(trainer, mixture, recorder, args: MixtureArguments) -> dict[str, Any]:
    from accelerate.utils import gather_object

    trainer.save_model()
    counts = gather_object([dict(recorder.counts)])
    total: collections.Counter = collections.Counter()
    for c in counts:
        total.update(c)
    result = {"consumed": dict(total), "planned": mixture.plan.counts}
    if trainer.is_world_process_zero():
        trainer.save_state()
        out = Path(trainer.args.output_dir)
        (out / "consumed.json").write_text(json.dumps(result, indent=2))
        if args.report:
            from ..report import build_report

            result["report"] = str(build_report(out))
    return result


def prepare_run(args: MixtureArguments, training_args, fmt: str) -> tuple[str, Any, Any, dict[str, Any], Any]:
    """What SFT and GRPO runs share: `(model path, model, processor, targets, mixture)` — the pool and targets
    loaded and validated (before the model is loaded), the budget resolved, the model and processor loaded."""
    from ..mixture import Mixture
    from ..models import load_model

    model_path = resolve_model_path(args, training_args.output_dir, training_args.seed)
    pool, targets = load_pool_and_targets(args, fmt=fmt)
    mixture = Mixture(
        pool,
        budget=resolve_budget(args, sum(map(len, pool.values()))),
        seed=training_args.seed,
        validate=args.validate,
    )
    model, processor = load_model(model_path)
    return model_path, model, processor, targets, mixture


def train_on_mixture(
    trainer, mixture, args: MixtureArguments, targets: dict[str, Any], model_path: str, training_args
):
    """Attach the mixture and its selector to `trainer`, count what is collated, train, and finish the run."""
    from ..trainer import attach, record_consumption

    attach(trainer, mixture, selector=make_selector(args), targets=targets, model_id=model_path)
    recorder = record_consumption(trainer)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return _finish(trainer, mixture, recorder, args)


def run_sft(args: MixtureArguments, training_args) -> dict[str, Any]:
    """SFT with TRL's SFTTrainer on the mixture the selector plans (vision or text models)."""
    from trl import SFTTrainer

    from .probes import ProbeLossCallback

    training_args.remove_unused_columns = False  # keep `source` for per-source accounting
    model_path, model, processor, targets, mixture = prepare_run(args, training_args, fmt="sft")
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=mixture.dataset,
        processing_class=processor,
        peft_config=_lora(args),
    )
    if targets and args.probe_rows > 0:
        probes = {n: ds.select(range(min(args.probe_rows, len(ds)))) for n, ds in targets.items()}
        trainer.add_callback(ProbeLossCallback(probes, processor, trainer=trainer))
    return train_on_mixture(trainer, mixture, args, targets, model_path, training_args)


def run_grpo(args: MixtureArguments, training_args) -> dict[str, Any]:
    """GRPO with TRL's GRPOTrainer: the selector allocates the prompt budget across sources; rewards are logged
    per source."""
    from trl import GRPOTrainer

    from ..rewards import per_source, resolve_reward

    model_path, model, processor, targets, mixture = prepare_run(args, training_args, fmt="rl")
    reward_funcs = [per_source(resolve_reward(name)) for name in args.reward_funcs]
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=mixture.dataset,
        processing_class=processor,
        peft_config=_lora(args),
    )
    return train_on_mixture(trainer, mixture, args, targets, model_path, training_args)


def parse(config_cls, argv=None):
    from trl import TrlParser

    parser = TrlParser(dataclass_types=[MixtureArguments, config_cls])
    return parser.parse_args_and_config(argv)


def main_sft(argv=None) -> dict[str, Any]:
    from trl import SFTConfig

    args, training_args = parse(SFTConfig, argv)
    result = run_sft(args, training_args)
    shutdown()
    return result


def main_grpo(argv=None) -> dict[str, Any]:
    from trl import GRPOConfig

    args, training_args = parse(GRPOConfig, argv)
    result = run_grpo(args, training_args)
    shutdown()
    return result
