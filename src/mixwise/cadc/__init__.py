"""CADC: capability-attributed data curation (Li et al., "Uncovering Intrinsic Capabilities", SPEC section 3).

Only the abstract and figure captions are public; every decision marked **(assumed)** is ours and configurable
through [`CADCConfig`]. The pipeline ([`run_cadc`], or the [`CADC`] selector in any mixwise entry point):

1. **Trajectories.** Features come from the feature pipeline shared with ICONS ([`mixwise.signals.features`]: warm-up LoRA, per-row
   LoRA gradients, seeded projection to `d'`, L2-normalised, stored with fp32 norms). The stores are laid out exactly
   as ICONS lays them out, so a CADC run after an ICONS run with the same settings recomputes nothing. For each
   target subtask `s` and warm-up checkpoint `t`: `ḡ_s(θ_t) = mean_{j∈s} ĝ_j(θ_t)` (mean of unit features,
   [`mixwise.signals.influence.task_means`]). The trajectory is `τ_s = [ḡ_s(θ_1) / ‖·‖, …, ḡ_s(θ_T) / ‖·‖]` (each
   checkpoint block unit-normalised before concatenation so every checkpoint counts the same — **(assumed)**,
   `block_normalize`). Subtasks come from a target's subtask column (`Source.subtask_column` or `subtask_column`);
   a target without one is a single subtask named after the target — so the toy world's targets (no subtask column)
   are the subtasks of one combined target. With subtasks, they are named `target/subtask`.
2. **Discovery** ([`discover_capabilities`]). `S_ab = cos(τ_a, τ_b)`; a graph with an edge `a–b` (weight `S_ab`)
   when `S_ab > threshold` (default 0.0 **(assumed)**); Louvain communities
   (`networkx.algorithms.community.louvain_communities`, fixed `seed`, `resolution`), so K is found. With
   `n_capabilities=K`, agglomerative clustering (scikit-learn, average linkage on `1 − S`) gives exactly K.
   When no pair is above the threshold, every subtask is its own capability (a warning says so). Capabilities are
   numbered `c0, c1, …` by their first subtask in sorted subtask order (deterministic).
3. **Attribution** ([`trajectory_influence`]). Capability mean at checkpoint t: `ḡ_k(θ_t) = mean_{s∈k} ḡ_s(θ_t)`
   (each subtask counts the same **(assumed)**). Trajectory influence `Inf_k(z) = Σ_t w_t ⟨ĝ_z(θ_t), ḡ_k(θ_t)⟩`,
   `w_t` = the checkpoint's mean learning rate, normalised to sum to 1 (as ICONS/LESS combine checkpoints). Every
   pool row joins the pool of `argmax_k Inf_k(z)` (ties: lower k); the full `(N, K)` matrix is kept
   ([`CADCResult.add_columns`]: `cadc_capability`, `cadc_influence_<ck>`, `cadc_self_influence`).
4. **Curation** ([`curate`]). The budget is split over capabilities: `equal` (default, SPEC), `proportional` (to the
   capability pool sizes) or `custom` (`budget_weights`), exact integers by largest remainder; a share larger than
   its pool is capped and the rest re-split among the others. Inside each pool the rows with the highest `Inf_k`
   are taken (ties: row id). Self-influence `SI_t(z) = ‖g_z(θ_t)‖²` (the datastore's fp32 norms) gives
   `SI(z) = Σ_t w_t SI_t(z)` and, per capability, the curve `m_k(t) = mean over its selected rows of SI_t(z)` with
   relative change `Δ_k = (m_k(T) − m_k(1)) / m_k(1)`. Stage order (default `fastest_drop` **(assumed)**): ascending
   `Δ_k` — the capability whose self-influence falls fastest is learned first; ties (e.g. a single checkpoint,
   where every `Δ_k = 0`) by higher mean `SI`, then capability index. `slowest_drop`, `index` or an explicit list
   of capability names are the alternatives. The result is `Plan.staged([...])`, one per-sample stage per
   capability with at least one row, exact counts; the spine's [`~mixwise.MixtureSampler`] delivers the stages in
   order (each shuffled inside itself, resumable mid-stage).

**Single checkpoint.** With one checkpoint (e.g. a live model without warm-up, or an ICONS-preset warm-up of one
epoch) there is no trajectory: CADC falls back to single-checkpoint features with a `UserWarning` and records
`"trajectory": false` in the plan's `extra`.

The package: [`config`](config.py) (`CADCConfig`, also the `mixwise select --method cadc` command line),
[`curriculum`](curriculum.py) (the pure functions), [`result`](result.py) (`CADCResult`, plots),
[`selector`](selector.py) (`collect_features`, `run_cadc`, the `CADC` selector).
"""

from .config import BUDGET_SPLITS, STAGE_ORDERS, CADCConfig
from .curriculum import (
    Curation,
    Discovery,
    assign,
    build_trajectories,
    capability_means,
    curate,
    discover_capabilities,
    split_budget,
    staged_plan,
    subtask_means,
    trajectory_influence,
    trajectory_similarity,
)
from .result import CADCResult, plot_result
from .selector import CADC, TrajectoryFeatures, analyse, collect_features, run_cadc

__all__ = [
    "BUDGET_SPLITS",
    "CADC",
    "STAGE_ORDERS",
    "CADCConfig",
    "CADCResult",
    "Curation",
    "Discovery",
    "TrajectoryFeatures",
    "analyse",
    "assign",
    "build_trajectories",
    "capability_means",
    "collect_features",
    "curate",
    "discover_capabilities",
    "plot_result",
    "run_cadc",
    "split_budget",
    "staged_plan",
    "subtask_means",
    "trajectory_influence",
    "trajectory_similarity",
]
