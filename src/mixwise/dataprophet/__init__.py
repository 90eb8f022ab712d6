"""DataProphet: training-free per-source weights from perplexity, field similarity and diversity.

Method of *DataProphet: Demystifying Supervision Data Generalization in Multimodal LLMs* (Qi, He, Roth, Fu; seeds
`000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`), as stated in SPEC section 1. The directional score of a
training source s for a target t is::

    M(s→t) = QSim(s,t) · ASim(s,t) · ISim(s,t) · PPL(s) · (Sil(s) + H(s)) / PPL(t)

* `QSim`, `ASim`, `ISim` — field similarity of questions, answers and images: the dot product of the two datasets'
  **mean unit vectors** (= expected cosine over independent draws), embeddings from the base model's own frozen
  encoders ([`mixwise.signals.embeddings`]: by default the language model's last-layer hidden states mean-pooled over the
  field's tokens, and the vision tower + projector mean-pooled over the image's tokens; an external
  sentence-transformers text encoder can be given by local path);
* `PPL(D) = exp(mean over samples of the per-sample mean answer-token NLL)` under the base model
  ([`mixwise.signals.perplexity`]); `PPL(s)` on the source's training rows, `PPL(t)` on the target's validation rows;
* `Sil(s) + H(s)` — diversity of the source: mean Euclidean silhouette plus normalized entropy of a K=10 k-means on
  per-sample vectors z = normalize(mean of the sample's field unit vectors) ([`mixwise.signals.diversity`]).

Every factor can be switched off ([`Terms`]; the paper's ablations are [`ABLATIONS`]): a switched-off factor is
replaced by 1, removing exactly that factor. Signals are computed on a **seeded subsample** of each dataset
(`DataProphetConfig.subsample`, default 512 rows; the paper does not say), **cached per dataset** under a
deterministic fingerprint (dataset fingerprint + signal configuration + subsample rows + model id + library
version), so adding a target computes only that target's signals. Scoring work is split across processes with
[`mixwise.distributed.map_across_ranks`]; every rank ends with the same signals (padded batches give the same
values as batch size 1), so one and several processes give the same metric.

**Allocation (Alg. 1).** Per target t: `w_i(t) = f(M(s_i→t)) / Σ_j f(M(s_j→t))`, with `f` the identity (the paper:
proportional) or a **sharpening**: `f(m) = m^p` (`sharpen="power"`) or `f(m) = exp(m / T)` (`sharpen="temperature"`,
a softmax over sources). The paper's M spans only about 0.39–0.72, so proportional allocation is close to uniform;
sharpening concentrates the budget on the best sources. Negative scores (possible when a similarity or the
silhouette is negative) are clipped to 0 for the identity and power rules. **Several targets** are combined
explicitly: `w_i = Σ_t λ_t w_i(t)` with `λ` uniform (`combine="mean"`, the default: every target counts the same
whatever its scale) or the user's per-target weights (`combine="weighted"`, `target_weights`, normalized to sum 1).
The budget N is then split exactly with the spine's largest-remainder planner ([`mixwise.plan.Plan.from_weights`]:
`N_i = round(N·w_i)` repaired so that Σ N_i = N); a source asked for more rows than it has repeats rows (full passes,
then a random remainder), flagged `repeated` in the manifest (the paper draws extra rows from a larger original
dataset instead).

**Instance-level score (Alg. 2)**, for a pool of single samples u (e.g. generated data)::

    m(u→t) = QSim(u,t) · ASim(u,t) · ISim(u,t) · PPL({u}) / PPL(t)

with `Sim_X(u,t) = unit(x_u) · mean_unit_X(t)` and `PPL({u}) = exp(nll(u))`, no diversity term; several targets
are combined as `Σ_t λ_t m(u→t)`; select the top K ([`DataProphetInstances`], K = the budget) or every sample above
a threshold ([`select_instances`]).

The package, in the order the data flows:

* [`config`](config.py): `DataProphetConfig` (also the `mixwise score` command line) and the term switches;
* [`signals`](signals.py): per-dataset signals, computed across ranks and cached;
* [`allocation`](allocation.py): Alg. 1 weights and Alg. 2 instance scores (pure functions);
* [`result`](result.py): `DataProphetResult`, the terms and the plan they imply;
* [`selector`](selector.py): the `DataProphet` / `DataProphetInstances` selectors;
* [`tau`](tau.py): Kendall tau of a predicted metric against measured transfer (`mixwise eval-tau`).
"""

from .allocation import (
    capped_allocation,
    centred_similarity,
    combine_targets,
    guard_ppl_ratio,
    instance_scores,
    per_target_weights,
    select_instances,
    sharpen_scores,
    sign_safe,
)
from .config import ABLATIONS, PAPER_ABLATION_TAU, PRESET_VALUES, PRESETS, TERM_NAMES, DataProphetConfig, Terms
from .result import DataProphetResult, InstanceScores
from .selector import DataProphet, DataProphetInstances
from .signals import DatasetSignals, SignalComputer
from .tau import Matrix, TauReport, evaluate_tau, kendall_tau

__all__ = [
    "ABLATIONS",
    "PAPER_ABLATION_TAU",
    "PRESETS",
    "PRESET_VALUES",
    "TERM_NAMES",
    "DataProphet",
    "DataProphetConfig",
    "DataProphetInstances",
    "DataProphetResult",
    "DatasetSignals",
    "InstanceScores",
    "Matrix",
    "SignalComputer",
    "TauReport",
    "Terms",
    "capped_allocation",
    "centred_similarity",
    "combine_targets",
    "guard_ppl_ratio",
    "evaluate_tau",
    "instance_scores",
    "kendall_tau",
    "per_target_weights",
    "select_instances",
    "sharpen_scores",
    "sign_safe",
]
