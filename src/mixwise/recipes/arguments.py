"""What a recipe run trains on: [`MixtureArguments`] (mixwise's own options) and the check of the whole configuration
that runs before anything is loaded.

A recipe's command line is four dataclasses, parsed together by TRL's parser: `MixtureArguments` + TRL's
`SFTConfig` / `GRPOConfig` (training) + `trl.ModelConfig` (the model: path, dtype, attention implementation,
quantization, LoRA) + `trl.DatasetMixtureConfig` (TRL's `datasets:` entries, an alternative to `sources`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "METRIC_KINDS",
    "TOY",
    "MixtureArguments",
    "RecipeChecks",
    "check_recipe",
    "check_targets_named",
    "last_complete_checkpoint",
    "resolve_resume",
]

TOY = "toy"
METRIC_KINDS = ("exact_match", "numeric_match", "multiple_choice")
_TRUE = ("true", "yes", "1", "last")
_FALSE = ("", "false", "no", "0", "none")


@dataclass
class MixtureArguments:
    """What to train on: the pool, the targets, the budget and the selection method, plus what to watch."""

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
    probe_rows: int = field(
        default=8, metadata={"help": "Rows per target for the probe-loss curves (SFT; 0 turns them off)."}
    )
    metric_rows: int = field(
        default=4,
        metadata={
            "help": "Rows per target answered by generation every eval_steps for eval/<target>/<metric> (0: off)."
        },
    )
    metric_max_new_tokens: int = field(default=16, metadata={"help": "Generation length of those answers."})
    target_metrics: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "Metric per target: exact_match, numeric_match or multiple_choice (a dict in YAML, JSON on the "
            "CLI, or one name for every target). Default: exact_match."
        },
    )
    loss_by_source: bool = field(
        default=True, metadata={"help": "SFT: log the training loss of each source (train_loss_by_source/<name>)."}
    )
    reward_funcs: list[str] = field(
        default_factory=lambda: ["mixwise.rewards.exact_match"],
        metadata={"help": "GRPO reward functions by import path."},
    )
    record_rows: bool = field(
        default=False,
        metadata={"help": "Also record every collated row as (source, row id) in consumed.json (an audit trail)."},
    )
    report: bool = field(default=True, metadata={"help": "Write report.html at the end."})

    def __post_init__(self):
        for name in ("selector_kwargs", "target_metrics"):
            value = getattr(self, name)
            if isinstance(value, str) and value.strip().startswith("{"):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{name}: not valid JSON ({err}): {value!r}") from None


@dataclass
class RecipeChecks:
    """What the configuration check found: the selector (constructed), the reward functions (GRPO) and the
    checkpoint to resume (a path, or None)."""

    selector: Any
    reward_funcs: list[Any]
    resume_from: str | None
    metric_kinds: dict[str, str] | str


def _recipe_error(field_name: str, message: str) -> ValueError:
    return ValueError(f"recipe field `{field_name}`: {message}")


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The highest `checkpoint-N` of `output_dir` whose save finished (its `trainer_state.json`, written last by the
    Trainer, exists); a checkpoint a crash cut short is passed over."""
    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    steps = []
    for name in os.listdir(output_dir):
        head, _, step = name.partition("checkpoint-")
        if head == "" and step.isdigit() and os.path.isfile(os.path.join(output_dir, name, "trainer_state.json")):
            steps.append(int(step))
    return os.path.join(output_dir, f"checkpoint-{max(steps)}") if steps else None


def resolve_resume(value: Any, output_dir: str | os.PathLike) -> str | None:
    """`resume_from_checkpoint` as a checkpoint path: `true` (or `last`) is the last complete checkpoint of
    `output_dir`, a path must hold a finished checkpoint, `false` / empty is None."""
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _TRUE):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise _recipe_error(
                "resume_from_checkpoint",
                f"`true` resumes the last checkpoint of {os.fspath(output_dir)!r}, which has none",
            )
        return found
    if isinstance(value, str) and value.strip().lower() in _FALSE:
        return None
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise _recipe_error("resume_from_checkpoint", f"{path!r} is not a checkpoint directory")
    if not os.path.isfile(os.path.join(path, "trainer_state.json")):
        raise _recipe_error("resume_from_checkpoint", f"{path!r} has no trainer_state.json (an unfinished save?)")
    return path


def check_recipe(args: MixtureArguments, training_args: Any, kind: str) -> RecipeChecks:
    """Check the whole configuration before any data or model is loaded: the method and its keyword arguments
    (the selector is constructed), the budget, validation mode, metrics, reward functions and the checkpoint to
    resume. Raises `ValueError` naming the field."""
    from ..registry import SELECTORS, make_selector

    if args.method not in SELECTORS:
        raise _recipe_error("method", f"unknown selection method {args.method!r}; available: {sorted(SELECTORS)}")
    kwargs = args.selector_kwargs or {}
    if not isinstance(kwargs, dict):
        raise _recipe_error("selector_kwargs", f"expected a mapping of the selector's options, got {kwargs!r}")
    try:
        selector = make_selector(args.method, **kwargs)
    except (TypeError, ValueError) as err:
        raise _recipe_error("selector_kwargs", f"{args.method}: {err}") from None
    if args.budget is not None:
        if isinstance(args.budget, bool) or not float(args.budget).is_integer() or args.budget <= 0:
            raise _recipe_error("budget", f"a positive whole number of rows, got {args.budget!r}")
        args.budget = int(args.budget)
    elif args.budget_ratio is not None:
        if not 0 < float(args.budget_ratio) <= 1:
            raise _recipe_error("budget_ratio", f"must be in (0, 1], got {args.budget_ratio}")
    else:
        raise _recipe_error("budget", "set `budget` (rows) or `budget_ratio` (fraction of the pool)")
    if args.validate not in ("raise", "skip"):
        raise _recipe_error("validate", f"raise or skip, got {args.validate!r}")
    for name in ("probe_rows", "metric_rows", "metric_max_new_tokens", "toy_n_train", "toy_n_target"):
        if int(getattr(args, name)) < 0:
            raise _recipe_error(name, f"must be >= 0, got {getattr(args, name)}")
    metrics = args.target_metrics if args.target_metrics is not None else "exact_match"
    kinds = [metrics] if isinstance(metrics, str) else list(dict(metrics).values())
    bad = [k for k in kinds if k not in METRIC_KINDS]
    if bad:
        raise _recipe_error("target_metrics", f"unknown metric {bad[0]!r}; available: {list(METRIC_KINDS)}")
    reward_funcs = []
    if kind == "grpo":
        from ..rewards import resolve_reward

        if not args.reward_funcs:
            raise _recipe_error("reward_funcs", "GRPO needs at least one reward function")
        for path in args.reward_funcs:
            try:
                reward_funcs.append(resolve_reward(path))
            except ValueError as err:
                raise _recipe_error("reward_funcs", str(err)) from None
    resume_from = resolve_resume(training_args.resume_from_checkpoint, training_args.output_dir)
    return RecipeChecks(selector=selector, reward_funcs=reward_funcs, resume_from=resume_from, metric_kinds=metrics)


def check_targets_named(metrics: dict[str, str] | str, targets: dict[str, Any]) -> None:
    """A `target_metrics` mapping may only name targets that exist."""
    if isinstance(metrics, dict):
        unknown = sorted(set(metrics) - set(targets))
        if unknown:
            raise _recipe_error("target_metrics", f"names no target {unknown[0]!r}; targets: {sorted(targets)}")
