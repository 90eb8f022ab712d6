"""The ICONS pipeline and selector: features → per-task influence → aggregation → a per-sample plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..mixture import Mixture
from ..plan import Plan
from ..selectors import SelectionContext
from ..signals.duplicates import duplicate_groups
from ..signals.features import FeatureSelector, featurize_checkpoints, start_feature_run
from ..signals.influence import combine_influence, stream_scores, task_means
from ..sources import Source, extract_fields, named_datasets
from .aggregation import aggregate
from .config import ICONSConfig
from .result import ICONSResult

__all__ = ["ICONS", "answer_labels", "run_icons"]


def answer_labels(dataset: Any, name: str = "target") -> list[str]:
    """The reference answer of every row of a target (SFT or RL format), stripped and lower-cased."""
    return [
        extract_fields(row, name, k).answer.strip().lower()
        for k, row in enumerate(dataset.remove_columns([c for c in ("images", "image") if c in dataset.column_names]))
    ]


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
        on_chunk: forwarded to [`mixwise.signals.datastore.fill_store`] (tests).
    """
    cfg = config or ICONSConfig()
    run = start_feature_run(cfg, mixture, targets, model, processing_class, model_id, method="ICONS")
    per_checkpoint: list[dict[str, np.ndarray]] = []
    subtasks: dict[str, list[str]] = {}
    skipped: list[dict[str, Any]] = []
    checkpoints_info = []

    target_skipped: list[dict[str, Any]] = []
    groups: np.ndarray | None = None
    for step in featurize_checkpoints(
        cfg, mixture, run.targets, run.scoring, run.model_id, run.work_dir, "ICONS", on_chunk=on_chunk
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
            if labels is None and cfg.answer_subtasks:
                answers = answer_labels(t.dataset, t.name)
                if len(set(answers)) <= cfg.max_answer_subtasks:  # a closed answer space: one subtask per answer
                    keep = np.isfinite(np.asarray(norms))
                    feats, norms, labels = feats[keep], norms[keep], [a for a, k in zip(answers, keep) if k]
            sub_names, means = task_means(feats, norms, labels, name=t.name)
            if labels is not None:
                subtasks[t.name] = sub_names
            columns.append((t.name, len(sub_names)))
            all_means.append(means)
        if step.index == 0:
            skipped = step.pool.skipped()
            if cfg.dedup:  # duplicates from the first checkpoint's pool features (identical rows: identical features)
                groups = duplicate_groups(step.pool, cfg.dedup_threshold)  # streamed from the store
        # one streamed pass over the pool store for every task column at once
        streamed = stream_scores(step.pool, np.concatenate(all_means))
        scores: dict[str, np.ndarray] = {}
        start = 0
        for name, width in columns:
            scores[name] = streamed[:, start : start + width]
            start += width
        per_checkpoint.append(scores)

    influence = combine_influence(per_checkpoint, [c["weight"] for c in run.scoring.checkpoints], subtasks)
    n_valid = int(influence.valid.sum())
    if groups is not None:  # duplicates count once in the vote share too
        _, first = np.unique(groups, return_index=True)
        n_valid = max(1, int(influence.valid[first].sum()))
    p_vote = cfg.p_vote if cfg.p_vote is not None else min(1.0, n_select / max(n_valid, 1))
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
        groups=groups,
        coverage_floor=cfg.coverage_floor if cfg.aggregator == "vote" else 0.0,
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
        work_dir=run.work_dir,
        config=cfg.to_dict(),
        p_vote=p_vote,
        groups=groups,
    )


class ICONS(FeatureSelector):
    """The ICONS selector: per-sample gradient-influence consensus (see the package docstring).

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
    config_class = ICONSConfig

    def select(self, context: SelectionContext) -> Plan:
        self.result = run_icons(
            context.mixture,
            context.targets,
            context.budget,
            config=self.cfg,
            model=context.model,
            processing_class=context.processing_class,
            model_id=context.model_id,
        )
        targets = named_datasets(context.targets, "target") if context.targets else {}
        kwargs = self.result_plan_kwargs(context, targets={n: t._fingerprint for n, t in targets.items()})
        return Plan.from_rows(self.result.rows_per_source(), context.sizes, **kwargs)
