"""`mixwise grpo --config RECIPE.yaml [--field value ...]`: GRPO with TRL's GRPOTrainer, the prompt budget allocated
across sources by the selector.

The command line is [`mixwise.recipes.MixtureArguments`] + TRL's `GRPOConfig` + `trl.ModelConfig` +
`trl.DatasetMixtureConfig`, parsed by TRL's parser: every `trl grpo` option works (reward functions are
`reward_funcs`, by import path). `--resume_from_checkpoint true` continues the last checkpoint of `output_dir`.
"""

from __future__ import annotations

from typing import Any

from .main import parse_with
from .sft import summary


def parse(argv, prog: str, description: str) -> tuple:
    from trl import DatasetMixtureConfig, GRPOConfig, ModelConfig

    from ..recipes import MixtureArguments
    from ..recipes.shipped import resolve_config_argument

    types = [MixtureArguments, GRPOConfig, ModelConfig, DatasetMixtureConfig]
    return parse_with(types, resolve_config_argument(argv), prog, description)


def run(args: Any, training_args: Any, model_args: Any, dataset_args: Any) -> int:
    from ..distributed import is_main_process, shutdown
    from ..recipes import run_grpo

    result = run_grpo(args, training_args, model_args, dataset_args)
    if is_main_process():
        print(summary(result, training_args.output_dir))
    shutdown()
    return 0
