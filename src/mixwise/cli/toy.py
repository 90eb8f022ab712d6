"""`mixwise toy --out DIR`: write the toy world's sources to disk, one `save_to_disk` folder per source."""

from __future__ import annotations

from dataclasses import dataclass, field

from .main import parse_with


@dataclass
class ToyArguments:
    """`mixwise toy`: write the toy sources to disk, one folder per source (`DatasetDict.save_to_disk`)."""

    out: str = field(default="toy-world", metadata={"help": "Output directory."})
    n_train: int = field(default=200, metadata={"help": "Training rows per source."})
    n_test: int = field(default=50, metadata={"help": "Test rows per source."})
    fmt: str = field(default="sft", metadata={"help": "Row format: sft (images + messages) or rl (prompt + answer)."})
    families: list[str] | None = field(default=None, metadata={"help": "Families to write (default: all)."})
    image_size: int = field(default=32, metadata={"help": "Image side in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed."})


def parse(argv, prog: str, description: str) -> tuple:
    return parse_with([ToyArguments], argv, prog, description)


def run(args: ToyArguments) -> int:
    from ..toy import save_world

    paths = save_world(
        args.out,
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        fmt=args.fmt,
        families=args.families,
        image_size=args.image_size,
    )
    for name, path in paths.items():
        print(f"{name}\t{path}")
    return 0
