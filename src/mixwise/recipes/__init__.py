"""Training recipes: SFT and GRPO on a selected mixture with TRL's trainers, as `mixwise sft` / `mixwise grpo`.

[`arguments`](arguments.py) holds mixwise's recipe options ([`MixtureArguments`]) and the check of the whole
configuration before anything loads; [`runner`](runner.py) the runs ([`run_sft`], [`run_grpo`]);
[`training`](training.py) full-model checkpoint loading, the per-source training loss and the consumed-rows count
carried across resumes; [`probes`](probes.py) the probe-loss curves; [`metrics`](metrics.py) the targets' own metric
during training; [`shipped`](shipped.py) the YAMLs shipped in the package (`mixwise recipes`).
"""

from .arguments import MixtureArguments, check_recipe, last_complete_checkpoint, resolve_resume
from .metrics import TargetMetricsCallback
from .probes import ProbeLossCallback
from .runner import (
    build_mixture,
    load_pool_and_targets,
    main_grpo,
    main_sft,
    parse,
    prepare_run,
    resolve_budget,
    resolve_model_path,
    run_grpo,
    run_sft,
    train_on_mixture,
)
from .shipped import copy_recipe, list_recipes, recipe_path

__all__ = [
    "MixtureArguments",
    "ProbeLossCallback",
    "TargetMetricsCallback",
    "build_mixture",
    "check_recipe",
    "copy_recipe",
    "last_complete_checkpoint",
    "list_recipes",
    "load_pool_and_targets",
    "main_grpo",
    "main_sft",
    "parse",
    "prepare_run",
    "recipe_path",
    "resolve_budget",
    "resolve_model_path",
    "resolve_resume",
    "run_grpo",
    "run_sft",
    "train_on_mixture",
]
