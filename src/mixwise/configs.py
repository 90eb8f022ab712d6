"""Configuration dataclasses of the CLI commands. Each doubles as a YAML schema (TRL's parser: `--config
file.yaml`, then command-line overrides)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoConfig:
    """`mixwise demo`: plan a mixture of the toy world and train the tiny LLaVA on it with TRL's SFTTrainer."""

    out: str = field(default="mixwise-demo", metadata={"help": "Output directory."})
    selector: str = field(default="uniform", metadata={"help": "Selector: uniform, random."})
    n_train: int = field(default=32, metadata={"help": "Training rows per toy source."})
    budget: int = field(default=64, metadata={"help": "Rows the run trains on (one epoch)."})
    families: list[str] | None = field(default=None, metadata={"help": "Toy families to use (default: all)."})
    epochs: float = field(default=1.0, metadata={"help": "Training epochs over the budget."})
    batch_size: int = field(default=8, metadata={"help": "Per-device batch size."})
    learning_rate: float = field(default=1e-3, metadata={"help": "Learning rate (LoRA)."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    seed: int = field(default=0, metadata={"help": "Seed of everything: model init, data, plan, order."})


@dataclass
class ToyConfig:
    """`mixwise toy`: write the toy sources to disk, one folder per source (`DatasetDict.save_to_disk`)."""

    out: str = field(default="toy-world", metadata={"help": "Output directory."})
    n_train: int = field(default=200, metadata={"help": "Training rows per source."})
    n_test: int = field(default=50, metadata={"help": "Test rows per source."})
    fmt: str = field(default="sft", metadata={"help": "Row format: sft (images + messages) or rl (prompt + answer)."})
    families: list[str] | None = field(default=None, metadata={"help": "Families to write (default: all)."})
    image_size: int = field(default=32, metadata={"help": "Image side in pixels."})
    seed: int = field(default=0, metadata={"help": "Seed."})


@dataclass
class AllocateConfig:
    """`mixwise allocate`: turn per-source weights into an exact plan under a budget."""

    weights: str = field(default="", metadata={"help": "JSON file: {source: weight} (or a selection.json)."})
    budget: int = field(default=0, metadata={"help": "Number of rows."})
    out: str = field(default="plan.json", metadata={"help": "Where to write the plan (selection.json format)."})
    sizes: str | None = field(
        default=None,
        metadata={"help": "JSON file {source: rows}; or give --sources to read sizes from datasets on disk."},
    )
    sources: list[str] | None = field(default=None, metadata={"help": "Source directories (save_to_disk)."})
    split: str = field(default="train", metadata={"help": "Split to read from DatasetDict sources."})
    seed: int = field(default=0, metadata={"help": "Seed for drawing rows."})
