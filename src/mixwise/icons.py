"""ICONS: gradient-influence consensus selection (Wu et al., 2025), built on LESS (Xia et al., 2024).

ICONS selects a per-sample subset of the pool that is influential for *many* target tasks at once. With 20% of
LLaVA-665K it keeps 98.6% of full-data performance (random 20%: 95.8%). The pipeline ([`run_icons`], or the
[`ICONS`] selector inside any mixwise entry point):

1. **Warm-up** ([`mixwise.warmup`]): LoRA on a seeded 5% of the pool with `transformers.Trainer` (ICONS preset
   r=128, alpha=256, every linear layer of the language model, lr 2e-4, 1 epoch, cosine; LESS preset r=128,
   alpha=512, q/k/v/o, 4 epochs, a checkpoint per epoch); checkpoints keep the optimizer state.
2. **Features** ([`mixwise.gradients`], [`mixwise.datastore`]): for every pool row and every validation row, the
   gradient of that row's own mean answer-token loss w.r.t. the LoRA parameters (adapter attached once, unmerged),
   in batches with per-sample hooks; `sgd` for validation rows; for pool rows `sgd` (ICONS) or `adam` (LESS:
   optimizer state matched by name) or `sign`; projected to `d'` (default 8192) by a seeded blockwise Gaussian
   projection and L2-normalised; stored in a resumable memory-mapped datastore that many processes fill together.
3. **Influence** ([`mixwise.influence`]): `I_k(z) = ⟨g̃(z), mean_j g̃'_j⟩` per task (never the `N × |V|` matrix);
   several checkpoints summed with learning-rate weights (normalised to 1); subtasks max-merged.
4. **Vote** (generalist stage): each task votes for its top `p_vote` share of the pool; the `p_select` share with
   the most votes is selected, ties broken by the mean within-task percentile rank, then the row id. The other
   aggregators of the paper's Table 3 (`merge`, `max`, `gausnorm`, `sumnorm`, `round_robin`, `min_rank`) and the
   single-task `specialist` (LESS) are available; `signal="rds"` gives the RDS baseline (last-token final hidden
   states through the same influence and vote); `visual_dependency=True` uses
   `grad(real image) − grad(N(0,1) noise image)` as the pool feature (ICONS appendix).

The result is a per-sample [`~mixwise.Plan`] (`selection.json`, with the thresholds, vote histogram and per-task
top-set overlaps in `extra`), the scores and votes (`icons_scores.npz`, and as dataset columns through
[`ICONSResult.add_columns`]) and two plots (vote histogram, per-task overlap heatmap).

**Where the model comes from.** From the CLI or a transform (`model_path`, no live model) the warm-up runs (or a
finished one is reused with `warmup_dir`). Inside a trainer (the spine's [`~mixwise.SelectionCallback`], which hands
over the live model) the warm-up is skipped by default: a live model that already carries a LoRA adapter (e.g.
SFTTrainer with `peft_config`) is scored with that adapter as it is; a live model without one gets a temporary
LoRA adapter on a copy (peft's default initialisation, `B = 0`, so the model's function is unchanged and the
features are the `lora_B` gradients — a random sketch `Σ_t δ_t (A x_t)ᵀ` of the full weight gradients). `adam`
features need a warm-up checkpoint. Set `run_warmup=True` to train the warm-up on a copy of the live model instead
(single process only).

**Stores.** Every datastore lives in `work_dir/features/<checkpoint>/<pool|target-NAME>-<hash of its identity>`,
so a rerun with the same settings resumes (or reuses) it, and a change of model, adapter, projection, gradient mode or
data goes to a new store instead of mixing features.

**Multi-process.** Under `accelerate launch`/`torchrun` every process fills its own chunks of the same datastores
(`work_dir` must be on a shared file system when several nodes are used), then every process computes the same
influence and selection from the complete stores; 1 and 2 processes give byte-identical stores and the same plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import datasets
import numpy as np
import torch

from .datastore import Datastore, fill_store, shared_store
from .gradients import GRADIENT_MODES, FeaturizerConfig, GradientFeaturizer, HiddenStateFeaturizer
from .influence import (
    AGGREGATORS,
    InfluenceScores,
    Selection,
    aggregate,
    combine_influence,
    stream_scores,
    task_means,
    top_set_overlap,
    vote_counts,
    vote_histogram,
)
from .mixture import Mixture
from .plan import Plan
from .projection import PROJECTOR_KINDS, ProjectorSpec
from .selectors import SelectionContext, _base_kwargs
from .sources import Source
from .warmup import (
    WarmupConfig,
    WarmupResult,
    adapter_hash,
    attach_adapter,
    detached_copy,
    load_adam_state,
    load_adapter_weights,
    load_base_model,
    lora_config,
    run_warmup,
)

SIGNALS = ("gradient", "rds")


@dataclass
class ICONSConfig:
    """Configuration of the ICONS selector (defaults follow the ICONS paper).

    Attributes:
        model_path: the base model to load when no live model is given (CLI, transforms).
        work_dir: where the warm-up checkpoints and datastores go (reused on rerun: every stage is resumable).
            Default: a new temporary directory.
        warmup_preset: `icons` (default), `less`, `tiny`, `tiny-less`; `warmup` overrides it completely.
        warmup: explicit warm-up hyper-parameters.
        run_warmup: `None` (auto: train a warm-up when no live model is given; score a live model as it is),
            `True` (always), `False` (never).
        warmup_dir: reuse this finished warm-up (a directory with `warmup.json`) instead of training one.
        checkpoints: `all` warm-up checkpoints (LESS, learning-rate weighted) or only the `last`.
        signal: `gradient` (ICONS) or `rds` (last-token hidden states, the RDS baseline).
        pool_mode: gradient mode for pool rows: `sgd` (ICONS), `adam` (LESS) or `sign`.
        target_mode: gradient mode for validation rows (`sgd` in both papers).
        proj_dim, projector, proj_seed: random projection `d'` (LESS 8192, ICONS 5120), kind
            (`gaussian`, `rademacher`, `factorized`) and seed.
        aggregator: `vote` (ICONS) or one of `merge`, `max`, `gausnorm`, `sumnorm`, `round_robin`, `min_rank`,
            `specialist`.
        p_vote: share of the pool each task votes for (default: the selection ratio, as in ICONS).
        specialist_task: the task of the `specialist` aggregator.
        sumnorm_guard: `sumnorm` refuses tasks whose influence sum is not above `guard · Σ|I|`.
        visual_dependency: pool feature `grad(image) − grad(noise image)` (ICONS appendix).
        subtask_column: column naming each validation row's subtask (one name for all targets, or per target);
            influence is computed per subtask and max-merged.
        batch_size, max_length, chunk_size, max_buffer_bytes, cache_bytes: featurization settings.
        on_error: `raise` on a bad row, or `skip` it (counted in the manifest; a skipped pool row is never selected).
        device: where features are computed for a loaded model (default: CUDA when available).
        plots: write the vote histogram and overlap heatmap next to `selection.json` (CLI / [`ICONSResult.save`]).
        progress: show progress bars.
    """

    model_path: str | None = None
    work_dir: str | None = None
    warmup_preset: str = "icons"
    warmup: WarmupConfig | None = None
    run_warmup: bool | None = None
    warmup_dir: str | None = None
    checkpoints: str = "all"
    signal: str = "gradient"
    pool_mode: str = "sgd"
    target_mode: str = "sgd"
    proj_dim: int = 8192
    projector: str = "gaussian"
    proj_seed: int = 0
    aggregator: str = "vote"
    p_vote: float | None = None
    specialist_task: str | None = None
    sumnorm_guard: float = 1e-3
    visual_dependency: bool = False
    subtask_column: str | dict[str, str] | None = None
    batch_size: int = 8
    max_length: int | None = None
    chunk_size: int = 256
    max_buffer_bytes: int = 1 << 30
    cache_bytes: int = 1 << 30
    on_error: str = "raise"
    device: str | None = None
    plots: bool = True
    progress: bool = True

    def __post_init__(self):
        if self.signal not in SIGNALS:
            raise ValueError(f"unknown signal {self.signal!r}; expected one of {SIGNALS}")
        for name in ("pool_mode", "target_mode"):
            if getattr(self, name) not in GRADIENT_MODES:
                raise ValueError(f"{name} must be one of {GRADIENT_MODES}, got {getattr(self, name)!r}")
        if self.projector not in PROJECTOR_KINDS or self.projector == "none":
            raise ValueError(f"projector must be gaussian, rademacher or factorized, got {self.projector!r}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.aggregator!r}; expected one of {AGGREGATORS}")
        if self.checkpoints not in ("all", "last"):
            raise ValueError(f"checkpoints must be 'all' or 'last', got {self.checkpoints!r}")
        if self.p_vote is not None and not 0 < self.p_vote <= 1:
            raise ValueError(f"p_vote must be in (0, 1], got {self.p_vote}")
        if isinstance(self.warmup, Mapping):
            self.warmup = WarmupConfig(**self.warmup)

    def warmup_config(self) -> WarmupConfig:
        return self.warmup or WarmupConfig.preset(self.warmup_preset)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["warmup"] = asdict(self.warmup_config())
        for key in ("progress", "plots"):
            d.pop(key)
        return d


# ---------------------------------------------------------------------------------------------------------------------
# Result
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ICONSResult:
    """Scores, votes and the selection of one ICONS run over a mixture's pool (rows = `mixture.dataset` order)."""

    influence: InfluenceScores
    selection: Selection
    names: list[str]
    offsets: dict[str, int]
    sizes: dict[str, int]
    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    work_dir: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    p_vote: float | None = None
    target_skipped: list[dict[str, Any]] = field(default_factory=list)

    @property
    def n_select(self) -> int:
        return len(self.selection.order)

    @property
    def votes(self) -> np.ndarray:
        """Votes per pool row (computed with `p_vote` also when another aggregator selected the rows)."""
        if self.selection.votes is not None:
            return self.selection.votes
        return vote_counts(self.influence.scores, self.p_vote)[0]

    def rows_per_source(self) -> dict[str, list[int]]:
        """Selected row ids per source (sorted)."""
        rows = self.selection.rows
        out = {}
        for n in self.names:
            lo, hi = self.offsets[n], self.offsets[n] + self.sizes[n]
            out[n] = (rows[(rows >= lo) & (rows < hi)] - lo).tolist()
        return out

    def columns(self) -> dict[str, np.ndarray]:
        """`icons_votes`, `icons_selected` and `icons_score_<task>` per pool row (NaN score: skipped row)."""
        selected = np.zeros(len(self.influence.scores), bool)
        selected[self.selection.order] = True
        cols = {"icons_votes": self.votes.astype(np.int64), "icons_selected": selected}
        for k, task in enumerate(self.influence.tasks):
            cols[f"icons_score_{task}"] = self.influence.scores[:, k].astype(np.float32)
        return cols

    def add_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """`dataset` (the mixture's concatenated pool, same row order) with the [`columns`] added, each with an
        explicit deterministic fingerprint (so that `datasets` caching works)."""
        from .transforms import transform_fingerprint

        if len(dataset) != len(self.influence.scores):
            raise ValueError(
                f"dataset has {len(dataset)} rows but the ICONS scores cover {len(self.influence.scores)}"
            )
        digest = hashlib.sha256(np.ascontiguousarray(self.influence.scores).tobytes()).hexdigest()[:16]
        for name, values in self.columns().items():
            if name in dataset.column_names:
                dataset = dataset.remove_columns(name)
            fp = transform_fingerprint(f"icons:{name}", {"scores": digest, **self.config}, None, dataset._fingerprint)
            dataset = dataset.add_column(name, values.tolist(), new_fingerprint=fp)
        return dataset

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for the manifest's `extra`."""
        n_tasks = len(self.influence.tasks)
        votes = self.votes
        info: dict[str, Any] = {
            "aggregator": self.selection.method,
            "signal": self.config.get("signal"),
            "tasks": self.influence.tasks,
            "subtasks": self.influence.subtasks,
            "n_select": self.n_select,
            "p_vote": self.p_vote,
            "vote_thresholds": self.selection.thresholds or vote_counts(self.influence.scores, self.p_vote)[1],
            "vote_histogram": vote_histogram(votes, n_tasks, self.selection.order),
            "top_set_overlap": top_set_overlap(self.influence.scores, self.n_select).round(6).tolist(),
            "checkpoints": self.checkpoints,
            "feature_skipped": {"count": len(self.skipped), "rows": self.skipped[:100]},
            "target_feature_skipped": {"count": len(self.target_skipped), "rows": self.target_skipped[:100]},
            "tie_break": "votes desc, then mean within-task percentile rank desc, then row id asc",
        }
        if self.work_dir:
            info["work_dir"] = self.work_dir
        return info

    def save(self, out_dir: str, plots: bool = True) -> list[str]:
        """Write `icons_scores.npz` (scores, votes, selected mask, tasks) and the plots; returns the paths."""
        os.makedirs(out_dir, exist_ok=True)
        path = os.path.join(out_dir, "icons_scores.npz")
        cols = self.columns()
        np.savez(
            path,
            scores=self.influence.scores,
            votes=cols["icons_votes"],
            selected=cols["icons_selected"],
            order=self.selection.order,
            tasks=np.array(self.influence.tasks),
        )
        paths = [path]
        if plots:
            paths += plot_result(self, out_dir)
        return paths


def plot_result(result: ICONSResult, out_dir: str) -> list[str]:
    """`vote_histogram.png` (rows per number of votes, all vs selected) and `overlap_heatmap.png` (share of each
    task's top set shared with every other task's, ICONS Fig. 3). Uses matplotlib's Agg canvas (no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = result.influence.tasks
    k = len(tasks)
    hist = vote_histogram(result.votes, k, result.selection.order)
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xs = np.arange(k + 1)
    ax.bar(xs - 0.2, hist["all"], width=0.4, label="pool")
    ax.bar(xs + 0.2, hist["selected"], width=0.4, label="selected")
    ax.set_xticks(xs)
    ax.set_xlabel("votes (tasks for which the row is in the top p_vote)")
    ax.set_ylabel("rows")
    ax.set_title(f"ICONS votes ({result.selection.method}, {result.n_select} selected)")
    ax.legend()
    fig.tight_layout()
    paths = [os.path.join(out_dir, "vote_histogram.png")]
    fig.savefig(paths[0], dpi=100)

    overlap = top_set_overlap(result.influence.scores, result.n_select)
    fig = Figure(figsize=(1.2 + 0.6 * k, 1.0 + 0.6 * k))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(overlap * 100, vmin=0, vmax=100, cmap="viridis")
    ax.set_xticks(range(k), tasks, rotation=45, ha="right")
    ax.set_yticks(range(k), tasks)
    for a in range(k):
        for b in range(k):
            colour = "k" if overlap[a, b] > 0.6 else "w"
            ax.text(b, a, f"{overlap[a, b] * 100:.0f}", ha="center", va="center", color=colour, fontsize=8)
    ax.set_title("top-set overlap (%)")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    paths.append(os.path.join(out_dir, "overlap_heatmap.png"))
    fig.savefig(paths[1], dpi=100)
    return paths


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------------------------


def _as_targets(targets: Mapping[str, Any] | Sequence[Source], subtask_column: str | Mapping | None) -> list[Source]:
    if not targets:
        raise ValueError("ICONS needs at least one target (a validation set per task)")
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


def _row_getter(dataset: datasets.Dataset, name_of):
    def get_rows(ids: np.ndarray):
        batch = dataset[ids.tolist()]
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*(batch[k] for k in keys))]
        return rows, [name_of(int(i)) for i in ids]

    return get_rows


def _revision(model: torch.nn.Module) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_commit_hash", None)


def _short(d: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:10]


class _Adapters:
    """The model whose adapter the features are taken at, and the checkpoints to visit (name, path, weight)."""

    def __init__(self, model, processing_class, checkpoints: list[dict[str, Any]]):
        self.model = model  # carries the first checkpoint's adapter weights
        self.processing_class = processing_class
        self.checkpoints = checkpoints


def _prepare_model(
    cfg: ICONSConfig, mixture: Mixture, model: Any, processing_class: Any, model_id: str | None, work_dir: str
) -> _Adapters:
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
        if live:
            base = detached_copy(model)
        else:
            if cfg.model_path is None:
                raise ValueError("ICONS with a finished warm-up needs `model_path` (or a live model)")
            base, loaded_processing = load_base_model(cfg.model_path)
            processing_class = processing_class or loaded_processing
            device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            base = base.to(device)
        peft_model = attach_adapter(base, checkpoints[0]["path"])
        return _Adapters(peft_model, processing_class, checkpoints)

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
    return _Adapters(scored, processing_class, [{"name": name, "path": None, "weight": 1.0}])


def _init_distributed() -> None:
    """Start accelerate's state for the launcher's processes. On a CPU-only machine under `torchrun`, accelerate
    only sets up the (gloo) process group when asked with `cpu=True`; a state already made without it would leave
    every process computing everything, so that is refused."""
    from accelerate import PartialState

    world = int(os.environ.get("WORLD_SIZE", "1"))
    st = PartialState(cpu=not torch.cuda.is_available()) if world > 1 else PartialState()
    if world > 1 and st.num_processes != world:
        raise RuntimeError(
            f"WORLD_SIZE={world} but accelerate's state has {st.num_processes} process(es): it was initialised before "
            "ICONS without multi-process support (on CPU, create `PartialState(cpu=True)` first)"
        )


@dataclass
class CheckpointStores:
    """The filled datastores of one warm-up checkpoint: every target's and the pool's."""

    index: int
    info: dict[str, Any]  # {"name", "weight", "adapter"}
    targets: list[tuple[Source, Datastore]]
    pool: Datastore


def featurize_checkpoints(
    cfg: ICONSConfig,
    mixture: Mixture,
    target_sources: list[Source],
    adapters: _Adapters,
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
    revision = _revision(peft_model)
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
            tpath = os.path.join(features_dir, f"target-{t.name}-{_short(identity)}")
            tstore = shared_store(tpath, len(t.dataset), target_feat.feature_dim, identity, chunk_size=cfg.chunk_size)
            fill_store(
                tstore,
                _row_getter(t.dataset, lambda i, n=t.name: (n, i)),
                target_feat,
                desc=f"{label} target features [{t.name}]",
                progress=cfg.progress,
            )
            target_stores.append((t, tstore))
        identity = {**base_identity, "features": pool_feat.identity(), "dataset": mixture.dataset._fingerprint}
        path = os.path.join(features_dir, f"pool-{_short(identity)}")
        store = shared_store(path, mixture.total_size, pool_feat.feature_dim, identity, chunk_size=cfg.chunk_size)
        fill_store(
            store,
            _row_getter(mixture.dataset, mixture.locate),
            pool_feat,
            on_chunk=on_chunk,
            desc=f"{label} pool features [{ckpt['name']}]",
            progress=cfg.progress,
        )
        info = {"name": ckpt["name"], "weight": ckpt["weight"], "adapter": ahash}
        yield CheckpointStores(c, info, target_stores, store)


def run_icons(
    mixture: Mixture,
    targets: Mapping[str, Any] | Sequence[Source],
    n_select: int,
    config: ICONSConfig | None = None,
    model: Any = None,
    processing_class: Any = None,
    model_id: str | None = None,
    on_chunk: Any = None,
) -> ICONSResult:
    """Warm-up → features → influence → aggregation over `mixture`'s pool; returns an [`ICONSResult`].

    Args:
        mixture: the pool.
        targets: `{task: validation Dataset}` or target [`~mixwise.Source`]s (with `subtask_column` for subtasks).
        n_select: how many rows to select (`p_select · N`).
        config: see [`ICONSConfig`].
        model, processing_class: a live model (skips the warm-up by default; see the module docstring).
        model_id: identifier for fingerprints (default: `model_path` or the model's `name_or_path`).
        on_chunk: forwarded to [`mixwise.datastore.fill_store`] (tests).
    """
    from . import distributed
    from .callback import model_id_of

    cfg = config or ICONSConfig()
    _init_distributed()
    target_sources = _as_targets(targets, cfg.subtask_column)
    work_dir = cfg.work_dir
    if work_dir is None:  # one temporary directory, made by the main process (single node)
        work_dir = distributed.broadcast(
            tempfile.mkdtemp(prefix="mixwise-icons-") if distributed.is_main_process() else None
        )
    model_id = model_id or cfg.model_path or model_id_of(model)
    adapters = _prepare_model(cfg, mixture, model, processing_class, model_id, work_dir)
    if adapters.processing_class is None:
        raise ValueError("ICONS needs the model's processor or tokenizer (`processing_class`)")
    per_checkpoint: list[dict[str, np.ndarray]] = []
    subtasks: dict[str, list[str]] = {}
    skipped: list[dict[str, Any]] = []
    checkpoints_info = []

    target_skipped: list[dict[str, Any]] = []
    for step in featurize_checkpoints(
        cfg, mixture, target_sources, adapters, model_id, work_dir, "ICONS", on_chunk=on_chunk
    ):
        checkpoints_info.append(step.info)
        # validation rows -> one mean unit vector per task (or subtask)
        columns: list[tuple[str, int]] = []  # (task, number of subtask columns)
        all_means = []
        for t, tstore in step.targets:
            if step.index == 0:
                target_skipped += [{**row, "target": t.name} for row in tstore.skipped()]
            feats, norms = tstore.load()
            labels = t.dataset[t.subtask_column] if t.subtask_column else None
            sub_names, means = task_means(feats, norms, labels, name=t.name)
            if t.subtask_column:
                subtasks[t.name] = sub_names
            columns.append((t.name, len(sub_names)))
            all_means.append(means)
        if step.index == 0:
            skipped = step.pool.skipped()
        # one streamed pass over the pool store for every task column at once
        streamed = stream_scores(step.pool, np.concatenate(all_means))
        scores: dict[str, np.ndarray] = {}
        start = 0
        for name, width in columns:
            scores[name] = streamed[:, start : start + width]
            start += width
        per_checkpoint.append(scores)

    influence = combine_influence(per_checkpoint, [c["weight"] for c in adapters.checkpoints], subtasks)
    n_valid = int(influence.valid.sum())
    p_vote = cfg.p_vote if cfg.p_vote is not None else n_select / max(n_valid, 1)
    task = cfg.specialist_task
    if cfg.aggregator == "specialist" and task is None and len(influence.tasks) > 1:
        raise ValueError(f"the specialist aggregator needs `specialist_task` (one of {influence.tasks})")
    selection = aggregate(
        influence.scores,
        n_select,
        method=cfg.aggregator,
        p_vote=p_vote,
        task=task,
        tasks=influence.tasks,
        sumnorm_guard=cfg.sumnorm_guard,
    )
    return ICONSResult(
        target_skipped=target_skipped,
        influence=influence,
        selection=selection,
        names=list(mixture.names),
        offsets=dict(mixture.offsets),
        sizes=dict(mixture.sizes),
        checkpoints=checkpoints_info,
        skipped=skipped,
        work_dir=work_dir,
        config=cfg.to_dict(),
        p_vote=p_vote,
    )


class ICONS:
    """The ICONS selector: per-sample gradient-influence consensus (see the module docstring).

    Use it anywhere a selector goes:

    ```python
    selector = mixwise.ICONS(model_path="path/to/model", work_dir="icons-work", aggregator="vote")
    subset, plan = mixwise.select_mixture(pool, selector, budget=int(0.2 * n), targets={"vqa": val_ds})
    columns = selector.result.add_columns(mixture.dataset)  # votes and per-task scores as columns

    mixwise.attach(trainer, mixture, selector=mixwise.ICONS(), targets={"vqa": val_ds})  # live model, no warm-up
    ```

    The budget of the context is the number of selected rows (`p_select · N`). After `select`, `self.result` holds
    the [`ICONSResult`].
    """

    name = "icons"

    def __init__(self, config: ICONSConfig | None = None, **overrides: Any):
        self.cfg = replace(config, **overrides) if config is not None else ICONSConfig(**overrides)
        self.result: ICONSResult | None = None

    def config(self) -> dict[str, Any]:
        return self.cfg.to_dict()

    def select(self, context: SelectionContext) -> Plan:
        result = run_icons(
            context.mixture,
            context.targets,
            context.budget,
            config=self.cfg,
            model=context.model,
            processing_class=context.processing_class,
            model_id=context.model_id,
        )
        self.result = result
        kwargs = _base_kwargs(self, context)
        kwargs["fingerprints"] = {
            **kwargs["fingerprints"],
            "adapters": [c["adapter"] for c in result.checkpoints],
            "targets": {n: getattr(t, "_fingerprint", None) for n, t in _fingerprint_targets(context.targets)},
        }
        kwargs["extra"] = result.summary()
        return Plan.from_rows(result.rows_per_source(), context.sizes, **kwargs)

    def add_columns(self, dataset: datasets.Dataset) -> datasets.Dataset:
        """The last selection's votes and per-task scores as columns of `dataset` (see [`ICONSResult.add_columns`])."""
        if self.result is None:
            raise RuntimeError("call select() first")
        return self.result.add_columns(dataset)


def _fingerprint_targets(targets: Mapping[str, Any] | Sequence[Source]) -> list[tuple[str, Any]]:
    if isinstance(targets, Mapping):
        return [(n, t.dataset if isinstance(t, Source) else t) for n, t in targets.items()]
    return [(s.name, s.dataset) for s in targets]


__all__ = ["ICONS", "ICONSConfig", "ICONSResult", "SIGNALS", "plot_result", "run_icons"]
