"""The recipes shipped in the package (`mixwise/recipes/configs/`): training YAMLs for `mixwise sft` /
`mixwise grpo` / `mixwise generate` and accelerate launch configs (`accelerate/*.yaml`).

`mixwise recipes` lists them, `mixwise recipes copy NAME` copies one out to edit, and `--config NAME` (without a
path) runs a shipped one directly: `mixwise sft --config sft_uniform`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CONFIG_DIR", "Recipe", "copy_recipe", "list_recipes", "recipe_path", "resolve_config_argument"]

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


@dataclass(frozen=True)
class Recipe:
    """A shipped YAML: its name (`sft_uniform`, `accelerate/fsdp`), the command that runs it, its path and the
    first line of its header comment."""

    name: str
    command: str
    path: str
    summary: str


def _command(name: str) -> str:
    if name.startswith("accelerate/"):
        return "accelerate launch --config_file"
    if name.startswith("grpo"):
        return "mixwise grpo --config"
    if name.startswith("sft"):
        return "mixwise sft --config"
    if name.startswith("mmgen"):
        return "mixwise generate --config"
    return "--config"


def _summary(path: str) -> str:
    with open(path) as f:
        for line in f:
            text = line.strip()
            if text.startswith("#"):
                return text.lstrip("# ").strip()
            if text:
                break
    return ""


def list_recipes() -> list[Recipe]:
    """Every shipped YAML, training recipes first, then the accelerate configs."""
    out = []
    for sub in ("", "accelerate"):
        folder = os.path.join(CONFIG_DIR, sub)
        for fname in sorted(os.listdir(folder)):
            if fname.endswith(".yaml"):
                name = f"{sub}/{fname[:-5]}" if sub else fname[:-5]
                path = os.path.join(folder, fname)
                out.append(Recipe(name, _command(name), path, _summary(path)))
    return out


def recipe_path(name: str) -> str:
    """The path of the shipped recipe `name` (`sft_uniform`, `sft_uniform.yaml`, `accelerate/fsdp`)."""
    key = name[:-5] if name.endswith(".yaml") else name
    for recipe in list_recipes():
        if recipe.name == key:
            return recipe.path
    names = ", ".join(r.name for r in list_recipes())
    raise FileNotFoundError(f"no shipped recipe named {name!r}; shipped: {names}")


def copy_recipe(name: str, out: str | os.PathLike = ".", overwrite: bool = False) -> str:
    """Copy the shipped recipe `name` to `out` (a directory, or a file path ending in .yaml); returns the path."""
    source = recipe_path(name)
    out = os.fspath(out)
    target = out if out.endswith((".yaml", ".yml")) else os.path.join(out, os.path.basename(source))
    if os.path.exists(target) and not overwrite:
        raise FileExistsError(f"{target} exists; pass overwrite to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
    shutil.copyfile(source, target)
    return target


def resolve_config_argument(argv: Sequence[str] | None) -> list[str] | None:
    """`argv` with `--config NAME` replaced by the shipped recipe's path when NAME is not a file but names one."""
    if argv is None:
        import sys

        argv = sys.argv[1:]
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            value = argv[i + 1]
            if not os.path.exists(value):
                try:
                    argv[i + 1] = recipe_path(value)
                except FileNotFoundError:
                    pass  # TRL's parser reports the missing file
        elif arg.startswith("--config="):
            value = arg.split("=", 1)[1]
            if not os.path.exists(value):
                try:
                    argv[i] = f"--config={recipe_path(value)}"
                except FileNotFoundError:
                    pass
    return argv
