"""The feature pipeline ICONS and CADC share: warm-up → per-row LoRA gradients → projection → datastores.

[`FeatureConfig`] holds the settings of every stage (and is the base of `ICONSConfig` and `CADCConfig`, so the two
methods describe features with the same fields); [`prepare_scoring_model`] decides which model and adapter the
features are taken at; [`featurize_checkpoints`] fills (or reuses) one target store per target and one pool store
per warm-up checkpoint. A store's path and identity depend only on the model, adapter, checkpoint, featurizer and
dataset, so either method reuses the other's stores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import datasets
import numpy as np
import torch

from ..fingerprint import short_hash
from ..mixture import Mixture
from ..models import default_device, load_model
from ..sources import Source
from .datastore import Datastore, fill_store, shared_store
from .gradients import GRADIENT_MODES, FeaturizerConfig, GradientFeaturizer, HiddenStateFeaturizer
from .projection import PROJECTOR_KINDS, ProjectorSpec
from .warmup import (
    WarmupConfig,
    WarmupResult,
    adapter_hash,
    attach_adapter,
    detached_copy,
    load_adam_state,
    load_adapter_weights,
    lora_config,
    require_adam_state,
    run_warmup,
)

__all__ = [
    "SIGNALS",
    "CheckpointStores",
    "FeatureConfig",
    "ScoringModel",
    "FeatureRun",
    "FeatureSelector",
    "featurize_checkpoints",
    "model_revision",
    "prepare_scoring_model",
    "row_getter",
    "start_feature_run",
    "target_sources",
]

SIGNALS = ("gradient", "rds")


def _json_field(value: Any, name: str) -> Any:
    """A mapping given as JSON text on the command line, decoded."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} must be JSON (e.g. '{{\"a\": 1}}'), got {value!r}: {err}") from None
    return value


@dataclass
class FeatureConfig:
    """Settings of the feature pipeline (warm-up, gradient features, projection, datastores), shared by ICONS and
    CADC. Also their command-line schema: `mixwise select --method icons|cadc --proj_dim 4096 ...`."""

    model_path: str | None = field(
        default=None,
        metadata={"help": "The base model (directory or hub id) when no live model is given.", "aliases": ["--model"]},
    )
    work_dir: str | None = field(
        default=None,
        metadata={"help": "Warm-up checkpoints and datastores (reruns resume; default: a new temporary directory)."},
    )
    warmup_preset: str = field(
        default="icons", metadata={"help": "Warm-up preset: icons, less, tiny, tiny-less (see WarmupConfig)."}
    )
    warmup: dict[str, Any] | str | None = field(
        default=None,
        metadata={"help": 'Warm-up fields overriding the preset, e.g. \'{"fraction": 0.1, "epochs": 2}\'.'},
    )
    run_warmup: bool | None = field(
        default=None,
        metadata={"help": "Train a warm-up: None = only without a live model; True = always; False = never."},
    )
    warmup_dir: str | None = field(default=None, metadata={"help": "Reuse this finished warm-up instead."})
    checkpoints: str = field(default="all", metadata={"help": "Warm-up checkpoints to use: all (LESS) or last."})
    signal: str = field(default="gradient", metadata={"help": "gradient (ICONS) or rds (hidden-state baseline)."})
    pool_mode: str = field(default="sgd", metadata={"help": "Pool gradient mode: sgd (ICONS), adam (LESS), sign."})
    target_mode: str = field(default="sgd", metadata={"help": "Validation gradient mode (sgd in both papers)."})
    proj_dim: int = field(default=8192, metadata={"help": "Projection dimension d' (LESS 8192, ICONS 5120)."})
    projector: str = field(default="gaussian", metadata={"help": "gaussian, rademacher or factorized (sgd only)."})
    proj_seed: int = field(default=0, metadata={"help": "Seed of the random projection (and of a temporary LoRA)."})
    visual_dependency: bool = field(
        default=False, metadata={"help": "Pool feature grad(image) - grad(noise image) (ICONS appendix)."}
    )
    subtask_column: dict[str, str] | str | None = field(
        default=None,
        metadata={"help": "Targets' subtask column (one name, or JSON {target: column}); subtasks are max-merged."},
    )
    batch_size: int = field(default=8, metadata={"help": "Rows per forward/backward pass."})
    max_length: int | None = field(default=None, metadata={"help": "Truncate rows to this many tokens."})
    chunk_size: int = field(default=256, metadata={"help": "Rows per datastore chunk (the unit of resumption)."})
    max_buffer_bytes: int = field(
        default=1 << 30, metadata={"help": "Per-sample gradients buffered before projection."}
    )
    cache_bytes: int = field(default=1 << 30, metadata={"help": "Projection blocks kept in memory."})
    on_error: str = field(default="raise", metadata={"help": "raise, or skip bad rows (counted in the manifest)."})
    device: str | None = field(
        default=None, metadata={"help": "Device of a loaded model (default: cuda if available)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})

    def __post_init__(self):
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}; expected one of {SIGNALS}")
        for name in ("pool_mode", "target_mode"):
            if getattr(self, name) not in GRADIENT_MODES:
                raise ValueError(f"{name} must be one of {GRADIENT_MODES}, got {getattr(self, name)!r}")
        if self.projector not in PROJECTOR_KINDS or self.projector == "none":
            raise ValueError(f"projector must be gaussian, rademacher or factorized, got {self.projector!r}")
        if self.checkpoints not in ("all", "last"):
            raise ValueError(f"checkpoints must be 'all' or 'last', got {self.checkpoints!r}")
        if self.on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {self.on_error!r}")
        self.warmup = _json_field(self.warmup, "warmup")
        if isinstance(self.subtask_column, str) and self.subtask_column.lstrip().startswith("{"):
            self.subtask_column = _json_field(self.subtask_column, "subtask_column")
        self.warmup_config()  # validates the warm-up settings

    def warmup_config(self) -> WarmupConfig:
        """The warm-up: `warmup` itself when it is a `WarmupConfig`, else the preset with `warmup`'s fields."""
        if isinstance(self.warmup, WarmupConfig):
            return self.warmup
        return WarmupConfig.preset(self.warmup_preset, **(self.warmup or {}))

    def to_dict(self) -> dict[str, Any]:
        """The configuration as the manifest records it (the resolved warm-up; no display settings)."""
        d = asdict(self)
        d["warmup"] = asdict(self.warmup_config())
        d.pop("progress")
        return d


def target_sources(
    targets: Mapping[str, Any] | Sequence[Source], subtask_column: str | Mapping | None, method: str = "ICONS"
) -> list[Source]:
    """Targets as [`~mixwise.Source`]s of role `target`, each with its subtask column (its own, else the one given
    for all targets or per target); refuses an empty target or a missing subtask column, naming the target."""
    if not targets:
        raise ValueError(f"{method} needs at least one target (a validation set per task)")
    out = []
    items = targets.items() if isinstance(targets, Mapping) else [(s.name, s) for s in targets]
    for name, t in items:
        src = t if isinstance(t, Source) else Source(name, t, role="target")
        column = src.subtask_column
        if column is None and subtask_column is not None:
            column = subtask_column.get(name) if isinstance(subtask_column, Mapping) else subtask_column
        if column is not None and column not in src.dataset.column_names:
            raise ValueError(f"target '{name}' has no subtask column {column!r} (columns: {src.dataset.column_names})")
        if len(src.dataset) == 0:
            raise ValueError(f"target '{name}' has no rows: a validation set must not be empty")
        out.append(Source(src.name, src.dataset, split=src.split, role="target", subtask_column=column))
    return out


def row_getter(dataset: datasets.Dataset, name_of):
    """`ids -> (rows, names)` for [`mixwise.signals.datastore.fill_store`]: the rows of `dataset` and `name_of(id)`."""

    def get_rows(ids: np.ndarray):
        batch = dataset[ids.tolist()]
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        return rows, [name_of(int(i)) for i in ids]

    return get_rows


def model_revision(model: torch.nn.Module) -> str | None:
    """The hub revision (`_commit_hash`) of a (peft-wrapped) model, if it has one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_commit_hash", None)


class ScoringModel:
    """The model whose adapter the features are taken at, and the checkpoints to visit (`name`, `path`, `weight`)."""

    def __init__(self, model, processing_class, checkpoints: list[dict[str, Any]]):
        self.model = model  # carries the first checkpoint's adapter weights
        self.processing_class = processing_class
        self.checkpoints = checkpoints


def prepare_scoring_model(
    cfg: FeatureConfig, mixture: Mixture, model: Any, processing_class: Any, model_id: str | None, work_dir: str
) -> ScoringModel:
    """The model to featurize with (see the ICONS docstring, "Where the model comes from"): a finished or freshly
    trained warm-up's adapter on the base model, the live model's own adapter, or a temporary LoRA on a copy."""
    live = model is not None
    run = cfg.run_warmup if cfg.run_warmup is not None else (not live and cfg.warmup_dir is None)
    if cfg.warmup_dir is not None:
        warm: WarmupResult | None = WarmupResult.load(cfg.warmup_dir)
    elif run:
        if live and hasattr(model, "peft_config"):
            raise ValueError("run_warmup=True needs a base model; the live model already carries an adapter")
        source = model if live else cfg.model_path
        if source is None:
            raise ValueError("ICONS needs a model: a live model (trainer callback) or `model_path`")
        warm = run_warmup(
            source,
            processing_class,
            mixture.dataset,
            os.path.join(work_dir, "warmup"),
            cfg.warmup_config(),
            model_id=model_id,
            progress=cfg.progress,
        )
    else:
        warm = None

    if warm is not None:
        ckpts = warm.checkpoints if cfg.checkpoints == "all" else warm.checkpoints[-1:]
        if cfg.signal == "rds":
            ckpts = warm.checkpoints[-1:]  # representations: the final warm-up model only
        total = sum(c.lr_weight for c in ckpts)
        checkpoints = [
            {"name": os.path.basename(c.path), "path": c.path, "weight": c.lr_weight / total if total > 0 else 1.0}
            for c in ckpts
        ]
        if cfg.pool_mode == "adam" and cfg.signal != "rds":
            for c in checkpoints:  # before any model is loaded: an Adafactor / SGD warm-up has no Adam moments
                require_adam_state(c["path"])
        if live:
            base = detached_copy(model)
        else:
            if cfg.model_path is None:
                raise ValueError("ICONS with a finished warm-up needs `model_path` (or a live model)")
            base, loaded_processing = load_model(cfg.model_path, device=cfg.device or default_device())
            processing_class = processing_class or loaded_processing
        peft_model = attach_adapter(base, checkpoints[0]["path"])
        return ScoringModel(peft_model, processing_class, checkpoints)

    if not live:
        raise ValueError("ICONS without a warm-up needs a live model (trainer callback) or `warmup_dir`")
    if cfg.pool_mode == "adam":
        raise ValueError("pool_mode='adam' needs a warm-up checkpoint's optimizer state; set run_warmup or warmup_dir")
    if hasattr(model, "peft_config"):
        name = "live"
        scored = model
    else:
        from peft import get_peft_model

        name = "live-temporary-lora"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.proj_seed)
            scored = get_peft_model(detached_copy(model), lora_config(model, cfg.warmup_config()))
    return ScoringModel(scored, processing_class, [{"name": name, "path": None, "weight": 1.0}])


@dataclass
class CheckpointStores:
    """The filled datastores of one warm-up checkpoint: every target's and the pool's."""

    index: int
    info: dict[str, Any]  # {"name", "weight", "adapter"}
    targets: list[tuple[Source, Datastore]]
    pool: Datastore


def featurize_checkpoints(
    cfg: FeatureConfig,
    mixture: Mixture,
    target_sources: list[Source],
    adapters: ScoringModel,
    model_id: str | None,
    work_dir: str,
    label: str,
    on_chunk: Any = None,
) -> Iterator[CheckpointStores]:
    """Fill (or reuse) the target and pool datastores of every checkpoint, one checkpoint at a time.

    Shared by ICONS and CADC: a store's path and identity depend only on the model, adapter, checkpoint,
    featurizer and dataset, so either method reuses the other's stores. One projector (and block cache) serves
    every checkpoint, the pool and the targets.
    """
    peft_model, processing_class = adapters.model, adapters.processing_class
    revision = model_revision(peft_model)
    common = dict(
        batch_size=cfg.batch_size,
        max_length=cfg.max_length,
        max_buffer_bytes=cfg.max_buffer_bytes,
        cache_bytes=cfg.cache_bytes,
        on_error=cfg.on_error,
    )
    spec = ProjectorSpec(kind=cfg.projector, dim=cfg.proj_dim, seed=cfg.proj_seed)
    shared_projector = None
    for c, ckpt in enumerate(adapters.checkpoints):
        if c > 0:
            load_adapter_weights(peft_model, ckpt["path"])
        if cfg.signal == "rds":
            pool_feat = HiddenStateFeaturizer(peft_model, processing_class, FeaturizerConfig(**common))
            target_feat = pool_feat
            ahash = None
        else:
            adam = load_adam_state(ckpt["path"], peft_model) if cfg.pool_mode == "adam" else None
            pool_feat = GradientFeaturizer(
                peft_model,
                processing_class,
                FeaturizerConfig(mode=cfg.pool_mode, visual_dependency=cfg.visual_dependency, **common),
                projector=spec,
                adam=adam,
                projector_instance=shared_projector,
            )
            shared_projector = pool_feat.projector
            target_feat = GradientFeaturizer(
                peft_model,
                processing_class,
                FeaturizerConfig(mode=cfg.target_mode, **common),
                projector=spec,
                projector_instance=shared_projector,
            )
            ahash = adapter_hash(peft_model, pool_feat.param_names)
        base_identity = {"model": model_id, "model_revision": revision, "adapter": ahash, "checkpoint": ckpt["name"]}
        features_dir = os.path.join(work_dir, "features", ckpt["name"])
        target_stores = []
        for t in target_sources:
            identity = {**base_identity, "features": target_feat.identity(), "dataset": t.dataset._fingerprint}
            tpath = os.path.join(features_dir, f"target-{t.name}-{short_hash(identity)}")
            tstore = shared_store(tpath, len(t.dataset), target_feat.feature_dim, identity, chunk_size=cfg.chunk_size)
            fill_store(
                tstore,
                row_getter(t.dataset, lambda i, n=t.name: (n, i)),
                target_feat,
                desc=f"{label} target features [{t.name}]",
                progress=cfg.progress,
            )
            target_stores.append((t, tstore))
        identity = {**base_identity, "features": pool_feat.identity(), "dataset": mixture.dataset._fingerprint}
        path = os.path.join(features_dir, f"pool-{short_hash(identity)}")
        store = shared_store(path, mixture.total_size, pool_feat.feature_dim, identity, chunk_size=cfg.chunk_size)
        fill_store(
            store,
            row_getter(mixture.dataset, mixture.locate),
            pool_feat,
            on_chunk=on_chunk,
            desc=f"{label} pool features [{ckpt['name']}]",
            progress=cfg.progress,
        )
        info = {"name": ckpt["name"], "weight": ckpt["weight"], "adapter": ahash}
        yield CheckpointStores(c, info, target_stores, store)


@dataclass
class FeatureRun:
    """What a feature run starts from: the targets, the work directory, the model id and the scoring model."""

    targets: list[Source]
    work_dir: str
    model_id: str | None
    scoring: ScoringModel


def start_feature_run(
    cfg: FeatureConfig,
    mixture: Mixture,
    targets: Mapping[str, Any] | Sequence[Source],
    model: Any,
    processing_class: Any,
    model_id: str | None,
    method: str,
) -> FeatureRun:
    """The preamble ICONS and CADC share: the process group, the targets (with subtask columns), the work directory
    (a temporary one, made by the main process, when none is set), the model id and the scoring model."""
    import tempfile

    from .. import distributed
    from ..fingerprint import model_id_of

    distributed.init_state()
    sources = target_sources(targets, cfg.subtask_column, method=method)
    work_dir = cfg.work_dir
    if work_dir is None:  # one temporary directory, made by the main process (single node)
        prefix = f"mixwise-{method.lower()}-"
        work_dir = distributed.broadcast(tempfile.mkdtemp(prefix=prefix) if distributed.is_main_process() else None)
    model_id = model_id or cfg.model_path or model_id_of(model)
    scoring = prepare_scoring_model(cfg, mixture, model, processing_class, model_id, work_dir)
    if scoring.processing_class is None:
        raise ValueError(f"{method} needs the model's processor or tokenizer (`processing_class`)")
    return FeatureRun(sources, work_dir, model_id, scoring)


class FeatureSelector:
    """Base of the selectors built on this pipeline (ICONS, CADC): configuration, last result, result columns.

    Subclasses set `name` and `config_class` and implement `select(context)`; after `select`, `self.result` holds
    the method's result (with `summary()`, `add_columns()` and `checkpoints`).
    """

    name: str
    config_class: type[FeatureConfig] = FeatureConfig

    def __init__(self, config: FeatureConfig | None = None, **overrides: Any):
        from dataclasses import replace

        self.cfg = replace(config, **overrides) if config is not None else self.config_class(**overrides)
        self.result: Any = None

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def add_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """The last selection's per-row scores as columns of `dataset` (the mixture's pool, same row order)."""
        if self.result is None:
            raise RuntimeError("call select() first")
        return self.result.add_columns(dataset)

    def result_plan_kwargs(self, context: Any, **fingerprints: Any) -> dict[str, Any]:
        """The manifest fields of the plan: the spine's, the adapters' hashes (and any other `fingerprints`), and the
        result's summary as `extra`."""
        from ..selectors import plan_kwargs

        kwargs = plan_kwargs(self, context)
        kwargs["fingerprints"] = {
            **kwargs["fingerprints"],
            "adapters": [c["adapter"] for c in self.result.checkpoints],
            **fingerprints,
        }
        kwargs["extra"] = self.result.summary()
        return kwargs
