"""`mixwise sft --config RECIPE.yaml [--field value ...]`: SFT with TRL's SFTTrainer on a selected mixture.

The command line is [`mixwise.recipes.MixtureArguments`] + TRL's `SFTConfig` + `trl.ModelConfig` +
`trl.DatasetMixtureConfig`, parsed by TRL's parser: every `trl sft` option works. `--config NAME` runs a shipped
recipe (`mixwise recipes`); `--resume_from_checkpoint true` continues the last checkpoint of `output_dir`.
"""

from __future__ import annotations

from typing import Any

from .main import parse_with


def parse(argv, prog: str, description: str) -> tuple:
    from trl import DatasetMixtureConfig, ModelConfig, SFTConfig

    from ..recipes import MixtureArguments
    from ..recipes.shipped import resolve_config_argument

    types = [MixtureArguments, SFTConfig, ModelConfig, DatasetMixtureConfig]
    return parse_with(types, resolve_config_argument(argv), prog, description)


def summary(result: dict[str, Any], output_dir: str) -> str:
    consumed = ", ".join(f"{n} {c}" for n, c in sorted(result["consumed"].items()))
    resumed = f" (resumed from {result['resumed_from']})" if result.get("resumed_from") else ""
    return f"trained on {sum(result['consumed'].values())} rows{resumed}: {consumed}; wrote {output_dir}"


def run(args: Any, training_args: Any, model_args: Any, dataset_args: Any) -> int:
    from ..distributed import is_main_process, shutdown
    from ..recipes import run_sft

    result = run_sft(args, training_args, model_args, dataset_args)
    if is_main_process():
        print(summary(result, training_args.output_dir))
    shutdown()
    return 0
