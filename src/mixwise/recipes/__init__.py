"""Training recipes: SFT and GRPO on a selected mixture with TRL's trainers, in TRL's script conventions.

[`runner`](runner.py) holds the recipe arguments ([`MixtureArguments`]) and the runs ([`run_sft`], [`run_grpo`]);
[`probes`](probes.py) the probe-loss callback that draws a loss curve per target.
"""

from .probes import ProbeLossCallback
from .runner import (
    MixtureArguments,
    load_pool_and_targets,
    main_grpo,
    main_sft,
    make_selector,
    parse,
    prepare_run,
    resolve_budget,
    resolve_model_path,
    run_grpo,
    run_sft,
    train_on_mixture,
)

__all__ = [
    "MixtureArguments",
    "ProbeLossCallback",
    "load_pool_and_targets",
    "main_grpo",
    "main_sft",
    "make_selector",
    "parse",
    "prepare_run",
    "resolve_budget",
    "resolve_model_path",
    "run_grpo",
    "run_sft",
    "train_on_mixture",
]
