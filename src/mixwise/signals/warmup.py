"""LoRA warm-up (LESS / ICONS step 1) with the real transformers `Trainer`, and reading its checkpoints back.

ICONS (Wu et al., 2025) and LESS (Xia et al., 2024) first train a LoRA adapter on a small random part of the pool
(5%), so that gradients are taken at a model that already follows the instruction format. The gradients of step 2
are then taken with respect to this adapter's parameters, and — for LESS's `adam` features — preconditioned with the
optimizer state saved in the checkpoint.

* **Presets.** [`WarmupConfig.icons`]: r=128, alpha=256, every linear layer of the *language model* (never the vision
  tower, the projector or `lm_head`), lr 2e-4, 1 epoch, cosine schedule. [`WarmupConfig.less`]: r=128, alpha=512,
  q/k/v/o projections, lr 2e-5, 4 epochs, linear schedule. [`WarmupConfig.small`]: the ICONS shape for models of
  hidden size ~100 (rank 16, 10% of the pool, lr 3e-3, 2 epochs). [`WarmupConfig.tiny`]: the same shapes scaled down
  for the test zoo. A checkpoint (adapter + `optimizer.pt` + `trainer_state.json`) is written after every epoch.
* **Rows.** A seeded uniform sample of `round(fraction · N)` pool rows (at least one), the same in every process.
* **Processes.** The warm-up is the same for any number of processes: with several, the main process trains it
  alone, as a single-process run in a child process, while the others wait ([`run_warmup`]).
* **Labels.** Rows are encoded with [`mixwise.signals.encoding.encode_rows`], so the warm-up, like the features, trains on
  answer tokens only.
* **Optimizer state by name.** `Trainer` saves `optimizer.state_dict()`, whose state is keyed by *integer index* in
  parameter-group order (group 0: parameters with weight decay, group 1: without; each in `named_parameters()`
  order). Mapping those integers to the wrong tensors is the most common failure of the LESS code. The warm-up
  therefore records, in every checkpoint, the parameter name of every optimizer index as the live optimizer holds
  them (`mixwise_optimizer_params.json`); [`load_adam_state`] maps indices to names with it (or, for a checkpoint
  written by another `Trainer`, by reproducing `Trainer.create_optimizer`'s grouping) and checks every state tensor's
  shape against the named parameter.
* **Checkpoint weights** (LESS, several checkpoints): each checkpoint's weight is the mean learning rate logged
  during its epoch, normalised to sum to 1 ([`WarmupResult.lr_weights`]).
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..files import atomic_write_json
from ..fingerprint import model_id_of, short_hash, stable_seed
from ..models import load_model
from .encoding import RowEncoder, image_token_id
from .gradients import AdamState

OPTIMIZER_NAMES_FILE = "mixwise_optimizer_params.json"
WARMUP_FILE = "warmup.json"
FAILED_FILE = "warmup.failed"  # written by the main process when a multi-process warm-up failed (with its key)
JOB_DIR = "job"  # the main process's job for its single-process child: rows, model or its path, processor
ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class WarmupConfig:
    """LoRA warm-up hyper-parameters (defaults: the ICONS preset).

    Attributes:
        fraction: share of the pool trained on (ICONS/LESS: 5%).
        r, alpha, dropout: LoRA rank, alpha and dropout.
        targets: `"all-linear"` (every `nn.Linear` of the language model), `"attention"` (q/k/v/o of the language
            model) or a list of layer names (last name component, e.g. `["q_proj", "v_proj"]`), always restricted to
            the language model.
        learning_rate, epochs, scheduler, warmup_ratio, weight_decay: optimisation (AdamW).
        batch_size, gradient_accumulation_steps: per-device batch and accumulation.
        max_length: truncate rows to this many tokens (`None`: no truncation).
        seed: seed of the row sample, the LoRA initialisation and the data order.
    """

    fraction: float = 0.05
    r: int = 128
    alpha: int = 256
    dropout: float = 0.05
    targets: str | list[str] = "all-linear"
    learning_rate: float = 2e-4
    epochs: float = 1.0
    scheduler: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    max_length: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.fraction <= 1:
            raise ValueError(f"warm-up fraction must be in (0, 1], got {self.fraction}")
        if self.r <= 0 or self.alpha <= 0:
            raise ValueError(f"LoRA r and alpha must be positive, got r={self.r}, alpha={self.alpha}")

    @classmethod
    def icons(cls, **overrides: Any) -> WarmupConfig:
        """ICONS: r=128, alpha=256, all linear layers of the language model, lr 2e-4, 1 epoch, cosine."""
        return cls(**{**dict(r=128, alpha=256, targets="all-linear", learning_rate=2e-4, epochs=1.0), **overrides})

    @classmethod
    def less(cls, **overrides: Any) -> WarmupConfig:
        """LESS: r=128, alpha=512, q/k/v/o, lr 2e-5, 4 epochs (a checkpoint per epoch), linear schedule."""
        base = dict(
            r=128,
            alpha=512,
            dropout=0.1,
            targets="attention",
            learning_rate=2e-5,
            epochs=4.0,
            scheduler="linear",
            batch_size=8,
            gradient_accumulation_steps=4,
        )
        return cls(**{**base, **overrides})

    @classmethod
    def tiny(cls, preset: str = "icons", **overrides: Any) -> WarmupConfig:
        """The preset's shape scaled down for the tiny test models (rank 4, larger fraction and lr, small batch)."""
        base = cls.less() if preset == "less" else cls.icons()
        scaled = dict(r=4, alpha=base.alpha // 32, fraction=0.25, learning_rate=1e-3, batch_size=4)
        scaled["epochs"] = 2.0 if preset == "less" else 1.0
        scaled["gradient_accumulation_steps"] = 1
        return cls(**{**asdict(base), **scaled, **overrides})

    @classmethod
    def small(cls, **overrides: Any) -> WarmupConfig:
        """The ICONS preset's shape for small models (hidden size ~100, e.g. the toy base of `mixwise.toybase`):
        rank 16, alpha 32, every linear layer of the language model, 10% of the pool, lr 3e-3, 2 epochs, cosine,
        batch 8. The `tiny` preset (rank 4, one epoch at lr 1e-3 on a quarter of a few rows) left such a model's loss
        where it was (1.489 vs 1.50); this one moves it (measured by `benchmarks/selection_quality.py`)."""
        base = dict(r=16, alpha=32, targets="all-linear", fraction=0.1, learning_rate=3e-3, epochs=2.0, batch_size=8)
        return cls(**{**base, **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> WarmupConfig:
        presets = {
            "icons": cls.icons,
            "less": cls.less,
            "small": cls.small,
            "tiny": cls.tiny,
            "tiny-less": lambda **o: cls.tiny("less", **o),
        }
        if name not in presets:
            raise ValueError(f"unknown warm-up preset {name!r}; expected one of {sorted(presets)}")
        return presets[name](**overrides)


@dataclass
class WarmupCheckpoint:
    path: str
    step: int
    lr_weight: float = 1.0


@dataclass
class WarmupResult:
    """A finished warm-up: its checkpoints (oldest first) with their learning-rate weights, and the rows it used."""

    output_dir: str
    checkpoints: list[WarmupCheckpoint]
    rows: list[int]
    config: dict[str, Any]
    key: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def lr_weights(self) -> list[float]:
        return [c.lr_weight for c in self.checkpoints]

    def save(self) -> str:
        return atomic_write_json(os.path.join(self.output_dir, WARMUP_FILE), asdict(self), indent=1)

    @classmethod
    def load(cls, output_dir: str) -> WarmupResult:
        with open(os.path.join(output_dir, WARMUP_FILE)) as f:
            d = json.load(f)
        d["checkpoints"] = [WarmupCheckpoint(**c) for c in d["checkpoints"]]
        d["output_dir"] = output_dir
        for c in d["checkpoints"]:  # paths relative to the directory, so a moved warm-up still loads
            if not os.path.isabs(c.path):
                c.path = os.path.join(output_dir, c.path)
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------------------
# Targets and rows
# ---------------------------------------------------------------------------------------------------------------------


def language_model_prefix(model: torch.nn.Module) -> str:
    """Module path of the language model (the decoder stack) inside `model`, e.g. `model.language_model`."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    if decoder is None:
        raise ValueError(f"cannot find the language model of {type(model).__name__} (no get_decoder())")
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise ValueError("the decoder returned by get_decoder() is not a submodule of the model")


def language_model_linear_names(model: torch.nn.Module, targets: str | Sequence[str] = "all-linear") -> list[str]:
    """Full names of the `nn.Linear` layers of the language model matching `targets` (see [`WarmupConfig`]).

    The vision tower, the multimodal projector and `lm_head` are never included: only modules under the decoder.
    """
    prefix = language_model_prefix(model)
    if targets == "all-linear":
        leaves = None
    elif targets == "attention":
        leaves = set(ATTENTION)
    elif isinstance(targets, str):
        raise ValueError(f"targets must be 'all-linear', 'attention' or a list of layer names, got {targets!r}")
    else:
        leaves = set(targets)
    names = [
        n
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear)
        and (n.startswith(prefix + ".") or not prefix)
        and (leaves is None or n.rsplit(".", 1)[-1] in leaves)
    ]
    if not names:
        raise ValueError(f"no linear layer of the language model ({prefix!r}) matches targets {targets!r}")
    return names


def lora_config(model: torch.nn.Module, cfg: WarmupConfig):
    """The peft `LoraConfig` of a warm-up: explicit full module names, so nothing outside the language model."""
    from peft import LoraConfig

    names = language_model_linear_names(model, cfg.targets)
    return LoraConfig(
        r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=names, task_type="CAUSAL_LM"
    )


def warmup_rows(n_total: int, fraction: float, seed: int) -> np.ndarray:
    """The warm-up rows: `max(1, round(fraction · n_total))` row indices drawn uniformly without replacement, sorted."""
    if n_total <= 0:
        raise ValueError("the pool is empty")
    k = min(n_total, max(1, round(fraction * n_total)))
    rng = np.random.default_rng(stable_seed(seed, "icons-warmup"))
    return np.sort(rng.choice(n_total, size=k, replace=False)).astype(np.int64)


def _warmup_key(cfg: WarmupConfig, model_id: str | None, data_fingerprint: str, rows: np.ndarray) -> str:
    return short_hash({"config": asdict(cfg), "model": model_id, "data": data_fingerprint, "rows": rows.tolist()}, 24)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def _optimizer_names_callback():
    from transformers import TrainerCallback

    class OptimizerNamesCallback(TrainerCallback):
        """Write, into every checkpoint, the parameter name of each optimizer index (as the live optimizer holds
        them), so that the integer-keyed optimizer state can be matched by name later."""

        def on_save(self, args, state, control, model=None, optimizer=None, **kwargs):
            if not state.is_world_process_zero or model is None or optimizer is None:
                return control
            names = {id(p): n for n, p in model.named_parameters()}
            order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
            ckpt = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if os.path.isdir(ckpt):
                payload = {"names": order, "groups": [len(g["params"]) for g in optimizer.param_groups]}
                atomic_write_json(os.path.join(ckpt, OPTIMIZER_NAMES_FILE), payload, indent=None)
            return control

    return OptimizerNamesCallback()


def detached_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of a live model that runs its *own* modules.

    Trainers may replace `model.forward` by an instance attribute (a wrapper closing over the original model);
    `copy.deepcopy` copies that closure, so the copy would silently run the original's modules — an adapter
    injected into the copy would then get no gradient. The instance-level `forward` is dropped from the copy,
    which restores the class's `forward`.
    """
    clone = copy.deepcopy(model)
    clone.__dict__.pop("forward", None)
    return clone


def run_warmup(
    model: torch.nn.Module | str,
    processing_class: Any,
    dataset: Any,
    output_dir: str,
    config: WarmupConfig | None = None,
    model_id: str | None = None,
    progress: bool = True,
    use_cpu: bool | None = None,
) -> WarmupResult:
    """Train the warm-up LoRA on a seeded `fraction` of `dataset` with `transformers.Trainer`.

    **The same warm-up for any number of processes.** With one process the warm-up trains in it. Under
    `torchrun` / `accelerate launch` with N > 1 processes it is not data-parallel (that would change the global
    batch, hence the number of optimizer steps, and the floating-point sums): the main process trains it alone,
    as one single-process `Trainer` in a child process of its own (a fresh interpreter without the launcher's
    distributed environment, on the main process's device and with its number of threads), while the other
    processes wait for its result by polling the file system (no collective is in flight, so no collective time-out
    applies to a long warm-up). The checkpoints, hence the adapters, features, datastores and selection, are the
    same for 1, 2 or N processes (tested with 1, 2 and 3). A live model is handed to the child by saving it (and
    its processor) into `output_dir/job/base-model`; a model given as a path is loaded from that path. The other
    processes' devices idle meanwhile; the warm-up is 5% of the pool for one epoch (ICONS).

    Args:
        model: a base model (deep-copied, never modified) or a path to load one from.
        processing_class: its processor/tokenizer (loaded with the model when `model` is a path and this is None).
        dataset: the pool rows (e.g. `Mixture.dataset`).
        output_dir: checkpoints go to `output_dir/checkpoint-<step>`; `warmup.json` records the result. A finished
            warm-up with the same configuration, model and data is reused; a different one in the same directory is
            refused. With several processes it must be on a file system every process sees.
        config: hyper-parameters (default: the ICONS preset).
        model_id: identifier recorded with the result (default: the model's `name_or_path`).
        use_cpu: force CPU training (default: CPU when CUDA is unavailable).
    """
    from .. import distributed

    cfg = config or WarmupConfig.icons()
    model_path = None
    if isinstance(model, str | os.PathLike):
        model_path = os.fspath(model)
        model_id = model_id or model_path
    elif hasattr(model, "peft_config"):
        raise ValueError("the warm-up trains a new LoRA adapter; pass the base model, not a peft model")
    model_id = model_id or (model_path if model_path is not None else model_id_of(model))
    rows = warmup_rows(len(dataset), cfg.fraction, cfg.seed)
    key = _warmup_key(cfg, model_id, dataset._fingerprint, rows)
    if use_cpu is None:
        use_cpu = not torch.cuda.is_available()
    st = distributed.state()
    if st.num_processes == 1:
        os.makedirs(output_dir, exist_ok=True)
        done = _finished_warmup(output_dir, key)
        if done is not None:
            return done
        if model_path is not None:
            base, loaded = load_model(model_path)
            processing_class = processing_class or loaded
        else:
            base = detached_copy(model)
        if processing_class is None:
            raise ValueError("run_warmup needs the model's processor or tokenizer")
        return train_warmup(base, processing_class, dataset.select(rows.tolist()), output_dir, cfg, rows, key,
                            model_id, progress, use_cpu)  # fmt: skip

    # Several processes: the main process decides (so that every rank takes the same branch), then trains alone.
    def check():
        os.makedirs(output_dir, exist_ok=True)
        done = _finished_warmup(output_dir, key)  # raises for another warm-up in this directory
        failed = os.path.join(output_dir, FAILED_FILE)
        if done is None and os.path.exists(failed):
            os.remove(failed)  # a failure of an earlier attempt (removed before the others start waiting)
        return done is not None

    finished = distributed.broadcast(_outcome(check) if st.is_main_process else None)
    if isinstance(finished, BaseException):
        raise finished
    error: BaseException | None = None
    if not finished:
        distributed.barrier()
        if st.is_main_process:
            try:
                _train_in_child(model, model_path, processing_class, dataset, output_dir, cfg, rows, key, model_id,
                                progress, use_cpu)  # fmt: skip
            except Exception as err:
                error = err
                with open(os.path.join(output_dir, FAILED_FILE), "w") as f:
                    f.write(key)
        else:
            _wait_for_warmup(output_dir, key)
    distributed.gather_agreed(None, error)
    return WarmupResult.load(output_dir)


def _outcome(fn):
    try:
        return fn()
    except Exception as err:  # handed to the other ranks by the broadcast, then raised on every rank
        return err


def _finished_warmup(output_dir: str, key: str) -> WarmupResult | None:
    if not os.path.exists(os.path.join(output_dir, WARMUP_FILE)):
        return None
    done = WarmupResult.load(output_dir)
    if done.key == key:
        return done
    raise ValueError(
        f"{output_dir} holds a warm-up for another configuration, model or dataset (key {done.key}, need {key}); "
        "use another directory or delete it"
    )


def _wait_for_warmup(output_dir: str, key: str, poll: float = 1.0) -> None:
    """Wait (polling files, no collective) until the main process's warm-up has finished or failed."""
    import time

    while True:
        for name in (WARMUP_FILE, FAILED_FILE):
            path = os.path.join(output_dir, name)
            if os.path.exists(path):
                try:
                    if name == WARMUP_FILE and WarmupResult.load(output_dir).key == key:
                        return
                    if name == FAILED_FILE:
                        with open(path) as f:
                            if f.read().strip() == key:
                                return
                except (OSError, ValueError, KeyError):  # a file being replaced right now: look again
                    pass
        time.sleep(poll)


def _child_env() -> dict[str, str]:
    """The environment of a single-process child: the launcher's distributed and sharding variables removed, the
    parent's thread count, its device, and this mixwise importable."""
    env = dict(os.environ)
    for name in list(env):
        if name in _DISTRIBUTED_ENV or name.startswith(("TORCHELASTIC_", "FSDP_", "ACCELERATE_DEEPSPEED_")):
            env.pop(name)
    for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_CONFIG_DS_FIELDS"):
        env.pop(name, None)
    env["OMP_NUM_THREADS"] = str(torch.get_num_threads())
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        index = torch.cuda.current_device()
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join([root, *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    return env


_DISTRIBUTED_ENV = {
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK",
}  # fmt: skip


def _train_in_child(model, model_path, processing_class, dataset, output_dir, cfg, rows, key, model_id, progress,
                    use_cpu) -> None:  # fmt: skip
    """The main process's side of a multi-process warm-up: write the job (rows, model or its path, processor),
    run it in a single-process child, re-raise its exception here."""
    import shutil
    import subprocess
    import sys

    from .. import distributed

    job = os.path.join(output_dir, JOB_DIR)
    if os.path.exists(job):
        shutil.rmtree(job)
    os.makedirs(job)
    dataset.select(rows.tolist()).save_to_disk(os.path.join(job, "rows"))
    spec: dict[str, Any] = {
        "model_path": model_path,
        "output_dir": os.path.abspath(output_dir),
        "config": asdict(cfg),
        "rows": rows.tolist(),
        "key": key,
        "model_id": model_id,
        "progress": progress,
        "use_cpu": use_cpu,
        "name_or_path": None,
    }
    if model_path is None:  # a live model: saved with its processor, as a checkpoint directory
        if processing_class is None:
            raise ValueError("run_warmup needs the model's processor or tokenizer")
        base = os.path.join(job, "base-model")
        model.save_pretrained(base)
        processing_class.save_pretrained(base)
        spec["model_path"] = base
        spec["name_or_path"] = getattr(getattr(model, "config", None), "_name_or_path", None)
    elif processing_class is not None:  # given next to a model path: the child uses it, not the path's
        processing_class.save_pretrained(os.path.join(job, "processor"))
    atomic_write_json(os.path.join(job, "job.json"), spec, indent=1)
    code = "import sys; from mixwise.signals.warmup import run_warmup_job; sys.exit(run_warmup_job(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", code, job], env=_child_env())
    error_file = os.path.join(job, "error.pkl")
    if os.path.exists(error_file):
        with open(error_file, "rb") as f:
            raise distributed.unpack_error(f.read(), "the warm-up's child process")
    if proc.returncode != 0:
        raise RuntimeError(f"the warm-up's child process exited with code {proc.returncode} (job {job})")
    if not os.path.exists(os.path.join(output_dir, WARMUP_FILE)):
        raise RuntimeError(f"the warm-up's child process wrote no {WARMUP_FILE} (job {job})")
    shutil.rmtree(job, ignore_errors=True)


def run_warmup_job(job: str) -> int:
    """The child's side of a multi-process warm-up ([`run_warmup`]): train the job in `job` in this (single)
    process; an exception is written to `job/error.pkl` for the parent to raise. Returns the exit code."""
    import datasets

    from .. import distributed
    from ..models import load_processing_class

    try:
        with open(os.path.join(job, "job.json")) as f:
            spec = json.load(f)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
        model, processing_class = load_model(spec["model_path"])
        if spec["name_or_path"]:
            model.config._name_or_path = spec["name_or_path"]  # recorded in the adapter config, as in one process
        if os.path.isdir(os.path.join(job, "processor")):
            processing_class = load_processing_class(os.path.join(job, "processor"))
        subset = datasets.load_from_disk(os.path.join(job, "rows"))
        cfg = WarmupConfig(**spec["config"])
        rows = np.asarray(spec["rows"], dtype=np.int64)
        train_warmup(model, processing_class, subset, spec["output_dir"], cfg, rows, spec["key"], spec["model_id"],
                     spec["progress"], spec["use_cpu"])  # fmt: skip
        return 0
    except Exception as err:
        with open(os.path.join(job, "error.pkl"), "wb") as f:
            f.write(distributed.pack_error(err))
        return 1


def train_warmup(
    model: torch.nn.Module,
    processing_class: Any,
    subset: Any,
    output_dir: str,
    cfg: WarmupConfig,
    rows: np.ndarray,
    key: str,
    model_id: str | None,
    progress: bool = True,
    use_cpu: bool = True,
) -> WarmupResult:
    """Train the warm-up LoRA on `subset` (the warm-up `rows` of the pool) in this process — one process, not
    distributed — resuming an interrupted run with the same `key`, and write `warmup.json`. `model` (a base model,
    modified: pass a copy) gets the adapter."""
    from peft import get_peft_model
    from transformers import Trainer, TrainingArguments
    from transformers.trainer_utils import get_last_checkpoint

    os.makedirs(output_dir, exist_ok=True)
    pending = os.path.join(output_dir, "warmup.pending")
    resume = None
    if os.path.exists(pending):
        with open(pending) as f:
            if f.read().strip() == key:
                resume = get_last_checkpoint(output_dir)
    if resume is None and glob.glob(os.path.join(output_dir, "checkpoint-*")):
        raise ValueError(f"{output_dir} holds checkpoints of another, unfinished warm-up; use another directory")
    with open(pending, "w") as f:
        f.write(key)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)  # the LoRA initialisation
        peft_model = get_peft_model(model, lora_config(model, cfg))
    encoder = RowEncoder(processing_class, cfg.max_length, image_token_id(model))

    def collate(batch_rows):
        return encoder.encode(batch_rows, [("warmup", -1)] * len(batch_rows))

    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        logging_steps=1,
        save_strategy="epoch",
        save_only_model=False,
        report_to=[],
        seed=cfg.seed,
        data_seed=cfg.seed,
        use_cpu=use_cpu,
        remove_unused_columns=False,
        disable_tqdm=not progress,
        dataloader_num_workers=0,
        optim="adamw_torch",
        ddp_find_unused_parameters=False,
    )
    trainer = Trainer(model=peft_model, args=args, train_dataset=subset, data_collator=collate)
    trainer.add_callback(_optimizer_names_callback())
    trainer.train(resume_from_checkpoint=resume)
    result = _collect(output_dir, cfg, rows, key, model_id)
    result.save()
    if os.path.exists(pending):
        os.remove(pending)
    return WarmupResult.load(output_dir)


def _collect(output_dir: str, cfg: WarmupConfig, rows: np.ndarray, key: str, model_id: str | None) -> WarmupResult:
    ckpts = sorted(glob.glob(os.path.join(output_dir, "checkpoint-*")), key=lambda p: int(p.rsplit("-", 1)[-1]))
    if not ckpts:
        raise RuntimeError(f"the warm-up wrote no checkpoint under {output_dir}")
    steps = [int(p.rsplit("-", 1)[-1]) for p in ckpts]
    weights = checkpoint_lr_weights(ckpts[-1], steps)
    checkpoints = [
        WarmupCheckpoint(path=os.path.relpath(p, output_dir), step=s, lr_weight=w)
        for p, s, w in zip(ckpts, steps, weights)
    ]
    return WarmupResult(
        output_dir=output_dir,
        checkpoints=checkpoints,
        rows=rows.tolist(),
        config=asdict(cfg),
        key=key,
        extra={"model": model_id},
    )


def checkpoint_lr_weights(last_checkpoint: str, steps: Sequence[int]) -> list[float]:
    """LESS's checkpoint weights: the mean learning rate logged in `(previous step, step]` per checkpoint,
    normalised to sum to 1 (equal weights when no learning rate was logged)."""
    path = os.path.join(last_checkpoint, "trainer_state.json")
    history = []
    if os.path.exists(path):
        with open(path) as f:
            history = [
                (h["step"], h["learning_rate"]) for h in json.load(f).get("log_history", []) if "learning_rate" in h
            ]
    means, prev = [], 0
    for s in steps:
        lrs = [float(lr) for st, lr in history if prev < st <= s]
        means.append(float(np.mean(lrs)) if lrs else float("nan"))
        prev = s
    if any(not np.isfinite(m) for m in means) or sum(means) <= 0:
        return [1.0 / len(steps)] * len(steps)
    total = sum(means)
    return [m / total for m in means]


# ---------------------------------------------------------------------------------------------------------------------
# Checkpoints → model and optimizer state
# ---------------------------------------------------------------------------------------------------------------------


def attach_adapter(base_model: torch.nn.Module, checkpoint: str):
    """The base model with the checkpoint's LoRA adapter attached **once, unmerged**, its weights trainable (so that
    gradients can be taken). (The published ICONS loader applies the adapter twice; this does not.)"""
    from peft import PeftModel

    if hasattr(base_model, "peft_config"):
        raise ValueError("the model already carries an adapter; attach the checkpoint to the base model")
    model = PeftModel.from_pretrained(base_model, checkpoint, is_trainable=True)
    model.eval()
    return model


def load_adapter_weights(peft_model: torch.nn.Module, checkpoint: str) -> None:
    """Replace the attached adapter's weights by another checkpoint's (same shapes), in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    path = os.path.join(checkpoint, "adapter_model.safetensors")
    if os.path.exists(path):
        state = load_file(path)
    else:
        state = torch.load(os.path.join(checkpoint, "adapter_model.bin"), map_location="cpu", weights_only=True)
    result = set_peft_model_state_dict(peft_model, state)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"checkpoint {checkpoint} has adapter weights the model lacks: {unexpected[:3]}")


def adapter_hash(model: torch.nn.Module, names: Sequence[str]) -> str:
    """sha256 of the named adapter tensors (names, shapes, float32 bytes), for the datastore identity."""
    params = dict(model.named_parameters())
    h = hashlib.sha256()
    for n in names:
        t = params[n].detach().to("cpu", torch.float32).contiguous()
        h.update(n.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()[:32]


def _strip(name: str) -> str:
    return re.sub(r"^(module\.)+", "", name)


def trainer_optimizer_order(model: torch.nn.Module) -> tuple[list[str], list[int]]:
    """The parameter order of `Trainer.create_optimizer`'s optimizer: trainable parameters with weight decay, then
    those without, each in `named_parameters()` order. Returns `(names, group sizes)`."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    first = [n for n in trainable if n in decay]
    second = [n for n in trainable if n not in decay]
    return first + second, [len(first), len(second)]


def optimizer_kind(groups: Sequence[dict], state: dict) -> str:
    """A name for the optimizer whose `state_dict()` this is, from its parameter-group and state keys (the
    checkpoint does not record the optimizer's class)."""
    group_keys = set().union(*(g.keys() for g in groups)) if groups else set()
    state_keys = set().union(*(e.keys() for e in state.values())) if state else set()
    if {"decay_rate", "clip_threshold"} <= group_keys or state_keys & {"exp_avg_sq_row", "exp_avg_sq_col"}:
        return "Adafactor"
    if state_keys & {"state1", "qmap1", "absmax1"}:
        return "a bitsandbytes optimizer (quantized state)"
    if "momentum_buffer" in state_keys or ({"momentum", "dampening"} <= group_keys and "betas" not in group_keys):
        return "SGD"
    if "square_avg" in state_keys:
        return "RMSprop"
    if "sum" in state_keys:
        return "Adagrad"
    if {"exp_avg", "exp_avg_sq"} <= state_keys:
        return "Adam"
    if not state_keys:
        return "an optimizer that holds no per-parameter state"
    return f"an optimizer with state keys {sorted(state_keys)}"


def require_adam_state(checkpoint: str) -> None:
    """Refuse (naming the optimizer found) a checkpoint whose `optimizer.pt` holds no Adam moments, before any
    model is loaded."""
    _read_adam_state(checkpoint)


def _read_adam_state(checkpoint: str) -> tuple[list[dict], dict]:
    """`optimizer.pt`'s parameter groups and state, refused unless they hold Adam moments."""
    path = os.path.join(checkpoint, "optimizer.pt")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{checkpoint} has no optimizer.pt; 'adam' features need the warm-up's optimizer state (train with "
            "save_only_model=False)"
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    _require_adam(checkpoint, saved["param_groups"], saved["state"])
    return saved["param_groups"], saved["state"]


def _require_adam(checkpoint: str, groups: Sequence[dict], state: dict) -> None:
    kind = optimizer_kind(groups, state)
    if kind != "Adam":
        keys = sorted(set().union(*(e.keys() for e in state.values()))) if state else []
        raise ValueError(
            f"pool_mode='adam' needs Adam moments (exp_avg, exp_avg_sq), but optimizer.pt of {checkpoint} holds the "
            f"state of {kind} (state keys: {keys}); warm up with an Adam optimizer (optim='adamw_torch') or use "
            "pool_mode='sgd'"
        )


def load_adam_state(checkpoint: str, model: torch.nn.Module, names: Sequence[str] | None = None) -> AdamState:
    """The Adam moments of `model`'s LoRA parameters from a `Trainer` checkpoint, matched **by name**.

    `optimizer.pt` keys its state by integer index in parameter-group order. The names of those indices come from the
    checkpoint's `mixwise_optimizer_params.json` (written by the warm-up from the live optimizer) or, for checkpoints
    of other `Trainer` runs, from [`trainer_optimizer_order`] applied to `model` (which must have the same trainable
    parameters as the trained model, e.g. loaded with [`attach_adapter`]). Every state tensor's shape is checked
    against its named parameter; a mismatch raises naming the parameter and index. A checkpoint of another optimizer
    (Adafactor, SGD, ...) is refused naming the optimizer found, and so is one missing the moments of any parameter
    (zero moments would silently change the features).

    Args:
        checkpoint: the checkpoint directory.
        model: the peft model the features are computed with.
        names: the LoRA parameters needed (default: all trainable parameters).
    """
    groups, state = _read_adam_state(checkpoint)
    indices = [int(i) for g in groups for i in g["params"]]
    sizes = [len(g["params"]) for g in groups]
    recorded = os.path.join(checkpoint, OPTIMIZER_NAMES_FILE)
    if os.path.exists(recorded):
        with open(recorded) as f:
            order = [_strip(n) for n in json.load(f)["names"]]
        origin = OPTIMIZER_NAMES_FILE
    else:
        order, expected_sizes = trainer_optimizer_order(model)
        origin = "Trainer's parameter grouping"
        nonempty = [s for s in sizes if s]
        if [s for s in expected_sizes if s] != nonempty:
            raise ValueError(
                f"optimizer.pt of {checkpoint} has parameter groups of sizes {sizes}, but the model's trainable "
                f"parameters group as {expected_sizes}: the optimizer state cannot be matched to parameters by name"
            )
    if len(order) != len(indices):
        raise ValueError(
            f"optimizer.pt of {checkpoint} holds {len(indices)} parameters but {origin} names {len(order)}"
        )
    params = {_strip(n): p for n, p in model.named_parameters()}
    wanted = list(names) if names is not None else [_strip(n) for n, p in model.named_parameters() if p.requires_grad]
    by_name = dict(zip(order, indices))
    exp_avg, exp_avg_sq, missing = {}, {}, []
    for name in wanted:
        if name not in params:
            raise KeyError(f"parameter {name!r} is not in the model")
        if name not in by_name:
            raise KeyError(f"the optimizer state of {checkpoint} has no entry named {name!r} (matched via {origin})")
        idx = by_name[name]
        shape = tuple(params[name].shape)
        entry = state.get(idx)
        if entry is None or "exp_avg" not in entry or "exp_avg_sq" not in entry:
            missing.append(name)
            continue
        for key in ("exp_avg", "exp_avg_sq"):
            if tuple(entry[key].shape) != shape:
                raise ValueError(
                    f"optimizer state index {idx} ({key}) has shape {tuple(entry[key].shape)} but parameter {name!r} "
                    f"has shape {shape}: the optimizer state does not belong to this model (matched via {origin})"
                )
        exp_avg[name] = entry["exp_avg"].float()
        exp_avg_sq[name] = entry["exp_avg_sq"].float()
    if missing:  # zero moments would turn the features into (1-β1)g/sqrt((1-β2)g²+ε) without a word
        raise ValueError(
            f"optimizer.pt of {checkpoint} has no Adam moments for {len(missing)} of the {len(wanted)} parameters "
            f"(e.g. {missing[0]!r}, matched via {origin}): they never took an optimizer step; 'adam' features need "
            "the moments of every parameter"
        )
    betas = {tuple(g.get("betas", (0.9, 0.999))) for g in groups}
    if len(betas) != 1:
        raise ValueError(f"parameter groups of {checkpoint} use different Adam betas {betas}")
    beta1, beta2 = betas.pop()
    steps = [float(e["step"]) for e in state.values() if "step" in e]
    return AdamState(
        names=list(wanted),
        exp_avg=exp_avg,
        exp_avg_sq=exp_avg_sq,
        beta1=float(beta1),
        beta2=float(beta2),
        step=max(steps) if steps else None,
        missing=missing,
    )
