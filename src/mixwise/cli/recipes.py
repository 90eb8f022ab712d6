"""`mixwise recipes [copy NAME [--out DIR]]`: list the recipes shipped in the package, or copy one out to edit."""

from __future__ import annotations

from dataclasses import dataclass, field

from .main import UsageError, parse_with


@dataclass
class RecipesArguments:
    """`mixwise recipes` lists the shipped recipes; `mixwise recipes copy NAME` copies one to `--out`."""

    action: str = field(default="list", metadata={"help": "list (default) or copy."})
    name: str | None = field(default=None, metadata={"help": "copy: the recipe's name (see the list)."})
    out: str = field(default=".", metadata={"help": "copy: the directory (or .yaml path) to write to."})
    overwrite: bool = field(default=False, metadata={"help": "copy: replace an existing file."})


def parse(argv, prog: str, description: str) -> tuple:
    argv = list(argv)
    # bare words: `mixwise recipes copy sft_uniform`
    words = []
    while argv and not argv[0].startswith("-"):
        words.append(argv.pop(0))
    if len(words) > 2:
        raise UsageError(f"expected `list` or `copy NAME`, got {' '.join(words)}")
    prefix = []
    if words:
        prefix += ["--action", words[0]]
    if len(words) == 2:
        prefix += ["--name", words[1]]
    return parse_with([RecipesArguments], prefix + argv, prog, description)


def run(args: RecipesArguments) -> int:
    from ..recipes.shipped import copy_recipe, list_recipes

    if args.action == "list":
        recipes = list_recipes()
        width = max(len(r.name) for r in recipes)
        for r in recipes:
            print(f"{r.name:<{width}}  {r.command} {r.name.split('/')[-1]}.yaml  # {r.summary}")
        print("\n`mixwise recipes copy NAME` copies one here; `--config NAME` runs a shipped one as is.")
        return 0
    if args.action == "copy":
        if not args.name:
            raise UsageError("copy needs a recipe name (`mixwise recipes` lists them)")
        try:
            print(f"wrote {copy_recipe(args.name, args.out, overwrite=args.overwrite)}")
        except (FileNotFoundError, FileExistsError) as err:
            raise UsageError(str(err)) from None
        return 0
    raise UsageError(f"unknown action {args.action!r}: list or copy")
