"""The `mixwise` command line: one module per command, each a dataclass of arguments (TRL's parser: `--config
file.yaml`, then command-line overrides) and a `run` function that prints what it did.

The commands are thin: they parse, call the library (which raises on bad input and returns results) and print.
"""

from .main import COMMANDS, Command, UsageError, main

__all__ = ["COMMANDS", "Command", "UsageError", "main"]
