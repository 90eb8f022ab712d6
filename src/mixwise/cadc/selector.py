"""The CADC pipeline and selector: trajectory features → discovery → attribution → curation → a staged plan."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..mixture import Mixture
from ..plan import Plan
from ..selectors import SelectionContext
from ..signals.features import FeatureSelector, featurize_checkpoints, start_feature_run, target_sources
from ..sources import Source
from .config import CADCConfig
from .curriculum import (
    Curation,
    Discovery,
    build_trajectories,
    capability_means,
    curate,
    discover_capabilities,
    normalized_weights,
    staged_plan,
    subtask_means,
    trajectory_influence,
)
from .result import CADCResult

__all__ = ["CADC", "TrajectoryFeatures", "analyse", "collect_features", "run_cadc"]


@dataclass
class TrajectoryFeatures:
    """Per-checkpoint subtask means and pool stores (what the datastores hold; nothing recomputed)."""

    subtasks: list[str]
    means: list[np.ndarray]  # per checkpoint (S, d')
    pool: list[Any]  # per checkpoint: a Datastore
    checkpoints: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    work_dir: str | None = None


def collect_features(
    mixture: Mixture,
    targets: Mapping[str, Any] | Sequence[Source],
    cfg: CADCConfig,
    model: Any = None,
    processing_class: Any = None,
    model_id: str | None = None,
) -> TrajectoryFeatures:
    """Fill (or reuse) the feature pipeline's datastores (ICONS's layout) for every warm-up checkpoint and return the subtask means."""
    expected = cfg.subtasks or {}
    unknown = [t for t in expected if t not in {s.name for s in target_sources(targets, cfg.subtask_column, "CADC")}]
    if unknown:
        raise ValueError(f"subtasks are listed for unknown targets {unknown}")
    run = start_feature_run(cfg, mixture, targets, model, processing_class, model_id, method="CADC")
    means, stores, info, names = [], [], [], None
    skipped: list[dict[str, Any]] = []
    for step in featurize_checkpoints(cfg, mixture, run.targets, run.scoring, run.model_id, run.work_dir, "CADC"):
        info.append(step.info)
        ck_names, ck_means = [], []
        for t, tstore in step.targets:
            feats, norms = tstore.load()
            labels = t.dataset[t.subtask_column] if t.subtask_column else None
            subs, m = subtask_means(feats, norms, labels, t.name, expected.get(t.name))
            ck_names += [f"{t.name}/{s}" for s in subs] if labels is not None else [t.name]
            ck_means.append(m)
        names = ck_names
        means.append(np.concatenate(ck_means))
        if step.index == 0:
            skipped = step.pool.skipped()
        stores.append(step.pool)
    return TrajectoryFeatures(names, means, stores, info, skipped, run.work_dir)


def analyse(
    subtasks: Sequence[str],
    means: Sequence[np.ndarray],
    pool: Sequence[Any],
    weights: Sequence[float] | None,
    budget: int,
    cfg: CADCConfig,
) -> tuple[Discovery, np.ndarray, np.ndarray, Curation, bool]:
    """Discovery → attribution → curation from per-checkpoint subtask means and pool features (no model)."""
    trajectory = len(means) > 1
    if not trajectory:
        warnings.warn(
            "CADC: only one checkpoint, so there is no trajectory; falling back to single-checkpoint features "
            "(train a warm-up with several checkpoints, e.g. warmup_preset='less', for trajectories)",
            UserWarning,
            stacklevel=2,
        )
    traj = build_trajectories(means, cfg.block_normalize)
    disc = discover_capabilities(
        traj, subtasks, cfg.threshold, cfg.n_capabilities, cfg.resolution, seed=cfg.community_seed
    )
    influence, si = trajectory_influence(pool, capability_means(means, disc.labels), weights)
    bw = cfg.budget_weights
    if isinstance(bw, Mapping):
        missing = [c for c in disc.names if c not in bw]
        if missing:
            raise ValueError(f"budget_weights miss capabilities {missing} (found: {disc.names})")
        bw = [float(bw[c]) for c in disc.names]
    order: Any = cfg.stage_order
    if not isinstance(order, str):
        unknown = [c for c in order if c not in disc.names]
        if unknown:
            raise ValueError(f"stage_order names unknown capabilities {unknown} (found: {disc.names})")
        order = [disc.names.index(c) for c in order]
    cur = curate(influence, si, budget, weights, cfg.budget_split, bw, order)
    return disc, influence, si, cur, trajectory


def run_cadc(
    mixture: Mixture,
    targets: Mapping[str, Any] | Sequence[Source],
    budget: int,
    config: CADCConfig | None = None,
    model: Any = None,
    processing_class: Any = None,
    model_id: str | None = None,
) -> tuple[CADCResult, Plan]:
    """Features → discovery → attribution → curation over `mixture`'s pool; returns the result and the staged plan
    (its `extra` holds [`CADCResult.summary`]; the caller adds the fingerprints)."""
    cfg = config or CADCConfig()
    feats = collect_features(mixture, targets, cfg, model, processing_class, model_id)
    weights = normalized_weights([c["weight"] for c in feats.checkpoints], len(feats.checkpoints)).tolist()
    disc, influence, si, cur, trajectory = analyse(feats.subtasks, feats.means, feats.pool, weights, budget, cfg)
    plan, table = staged_plan(cur, mixture, disc.names, method="cadc")
    result = CADCResult(
        discovery=disc,
        influence=influence,
        self_influence=si,
        weights=weights,
        curation=cur,
        stages=table,
        checkpoints=feats.checkpoints,
        trajectory=trajectory,
        config=cfg.to_dict(),
        skipped=feats.skipped,
        work_dir=feats.work_dir,
    )
    return result, plan


class CADC(FeatureSelector):
    """The CADC selector (see the package docstring): a staged plan, one stage per discovered capability.

    ```python
    selector = mixwise.cadc.CADC(model_path="path/to/model", work_dir="cadc-work", subtask_column="category")
    subset, plan = mixwise.select_mixture(pool, selector, budget=int(0.05 * n), targets={"mmt": val_ds})
    mixwise.attach(trainer, mixture, selector=CADC(run_warmup=True), targets=targets)  # via the callback
    ```

    The context's budget is the number of selected rows. After `select`, `self.result` holds the [`CADCResult`].
    """

    name = "cadc"
    config_class = CADCConfig

    def select(self, context: SelectionContext) -> Plan:
        if not context.targets:
            raise ValueError("CADC needs targets (validation sets whose subtasks define the capabilities)")
        self.result, plan = run_cadc(
            context.mixture,
            context.targets,
            context.budget,
            config=self.cfg,
            model=context.model,
            processing_class=context.processing_class,
            model_id=context.model_id,
        )
        return Plan.staged(plan.stages, **self.result_plan_kwargs(context))
