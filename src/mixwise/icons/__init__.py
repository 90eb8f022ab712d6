"""ICONS: gradient-influence consensus selection (Wu et al., 2025), built on LESS (Xia et al., 2024).

ICONS selects a per-sample subset of the pool that is influential for *many* target tasks at once. With 20% of
LLaVA-665K it keeps 98.6% of full-data performance (random 20%: 95.8%). The pipeline ([`run_icons`], or the
[`ICONS`] selector inside any mixwise entry point):

1. **Warm-up** ([`mixwise.signals.warmup`]): LoRA on a seeded 5% of the pool with `transformers.Trainer` (ICONS preset
   r=128, alpha=256, every linear layer of the language model, lr 2e-4, 1 epoch, cosine; LESS preset r=128,
   alpha=512, q/k/v/o, 4 epochs, a checkpoint per epoch); checkpoints keep the optimizer state.
2. **Features** ([`mixwise.signals.gradients`], [`mixwise.signals.datastore`], [`mixwise.signals.features`]): for every pool row and every validation row, the
   gradient of that row's own mean answer-token loss w.r.t. the LoRA parameters (adapter attached once, unmerged),
   in batches with per-sample hooks; `sgd` for validation rows; for pool rows `sgd` (ICONS) or `adam` (LESS:
   optimizer state matched by name) or `sign`; projected to `d'` (default 8192) by a seeded blockwise Gaussian
   projection and L2-normalised; stored in a resumable memory-mapped datastore that many processes fill together.
3. **Influence** ([`mixwise.signals.influence`]): `I_k(z) = ⟨g̃(z), mean_j g̃'_j⟩` per task (never the `N × |V|` matrix);
   several checkpoints summed with learning-rate weights (normalised to 1); subtasks max-merged.
4. **Vote** (generalist stage, [`mixwise.icons.aggregation`]): each task votes for its top `p_vote` share of the pool; the `p_select` share with
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
(with several processes it trains once, on the main process, so that its result does not depend on the number of
processes: [`mixwise.signals.warmup.run_warmup`]). A live model sharded by FSDP2 or ZeRO-3 is gathered into an
unsharded replica for the selection ([`mixwise.distributed.unsharded`]).

**Stores.** Every datastore lives in `work_dir/features/<checkpoint>/<pool|target-NAME>-<hash of its identity>`,
so a rerun with the same settings resumes (or reuses) it, and a change of model, adapter, projection, gradient mode or
data goes to a new store instead of mixing features.

**Multi-process.** Under `accelerate launch`/`torchrun` every process fills its own chunks of the same datastores,
each chunk into files of its own (`work_dir` must be on a file system every node sees; NFS is fine: no file has two
writers), then every process computes the same influence and selection from the complete stores; 1, 2 and 3
processes, and 2 nodes, give byte-identical stores and the same plan.

The package: [`config`](config.py) (`ICONSConfig`, also the `mixwise select --method icons` command line),
[`aggregation`](aggregation.py) (vote and the other aggregators), [`result`](result.py) (`ICONSResult`, plots),
[`selector`](selector.py) (`run_icons`, the `ICONS` selector).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# names are imported when first used, so that `mixwise.icons.aggregation` (numpy only) does not import torch
_LAZY = {
    "AGGREGATORS": "aggregation",
    "Selection": "aggregation",
    "aggregate": "aggregation",
    "top_set_overlap": "aggregation",
    "vote_counts": "aggregation",
    "vote_histogram": "aggregation",
    "ICONSConfig": "config",
    "ICONSResult": "result",
    "plot_result": "result",
    "ICONS": "selector",
    "run_icons": "selector",
    "answer_labels": "selector",
    "SIGNALS": "..signals.features",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = _LAZY[name]
        value = getattr(importlib.import_module(module if module.startswith("..") else f".{module}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from ..signals.features import SIGNALS
    from .aggregation import AGGREGATORS, Selection, aggregate, top_set_overlap, vote_counts, vote_histogram
    from .config import ICONSConfig
    from .result import ICONSResult, plot_result
    from .selector import ICONS, answer_labels, run_icons
