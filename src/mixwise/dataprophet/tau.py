"""Kendall-tau evaluation of a predicted transfer matrix against a measured one (DataProphet's protocol).

DataProphet (seeds `000_475a285f5303de1b.txt`, `001_fc131089fbf59c28.txt`; SPEC section 1) checks its training-free
metric `M(s→t)` against the measured relative transfer gain
`Δ(s→t) = (acc of t after training on s − base acc of t) / base acc of t` (rows sources, columns targets):

* **per target** t: Kendall's tau between `M(·→t)` and `Δ(·→t)` over all sources, including s = t;
  their mean is `tau_tgt` (paper 0.863);
* **per source** s: tau between `M(s→·)` and `Δ(s→·)` over targets; mean `tau_src` (paper 0.857);
* **headline** = `(tau_tgt + tau_src) / 2` (paper 0.860).

Tau-b (ties handled) is the default, computed by `scipy.stats.kendalltau`; `variant="c"` (Stuart's tau-c, scipy)
and `variant="a"` (no tie correction: `(concordant − discordant) / (n(n−1)/2)`) are offered for comparison.
`exclude_diagonal=True` drops the cell whose source and target share a name from each ranking.

On the paper's published matrices (`shared/data/dataprophet_paper/`) this gives `tau_tgt` = 0.864 (tau-b; the paper
prints 0.863), but `tau_src` only about 0.13: the published M does not reproduce the source-wise claim.

[`Matrix`] is the small labelled-matrix type used for all of DataProphet's CSV files (`metric.csv`, term matrices,
`delta.csv`): rows = sources, columns = targets.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = ["Matrix", "TauReport", "evaluate_tau", "kendall_tau"]

CORNER = "source\\target"


@dataclass
class Matrix:
    """A labelled 2-D array: `values[i, j]` belongs to row `rows[i]` and column `cols[j]`."""

    rows: list[str]
    cols: list[str]
    values: np.ndarray

    def __post_init__(self):
        self.rows = [str(r) for r in self.rows]
        self.cols = [str(c) for c in self.cols]
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.values.shape != (len(self.rows), len(self.cols)):
            raise ValueError(f"values of shape {self.values.shape} for {len(self.rows)} rows x {len(self.cols)} cols")
        for what, names in (("row", self.rows), ("column", self.cols)):
            if len(set(names)) != len(names):
                raise ValueError(f"repeated {what} names: {sorted({n for n in names if names.count(n) > 1})}")

    def __getitem__(self, key: tuple[str, str]) -> float:
        r, c = key
        return float(self.values[self.rows.index(r), self.cols.index(c)])

    def row(self, name: str) -> np.ndarray:
        return self.values[self.rows.index(name)]

    def col(self, name: str) -> np.ndarray:
        return self.values[:, self.cols.index(name)]

    def reindex(self, rows: Sequence[str], cols: Sequence[str], what: str = "matrix") -> Matrix:
        """The same matrix with rows and columns in the given order; names must match exactly (as sets)."""
        for axis, have, want in (("rows", self.rows, rows), ("columns", self.cols, cols)):
            missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
            if missing or extra:
                raise ValueError(f"{what}: {axis} do not match; missing {missing}, unexpected {extra}")
        ri = [self.rows.index(r) for r in rows]
        ci = [self.cols.index(c) for c in cols]
        return Matrix(list(rows), list(cols), self.values[np.ix_(ri, ci)])

    def to_dict(self) -> dict[str, dict[str, float]]:
        """`{row: {col: value}}` (JSON-friendly)."""
        return {r: {c: float(v) for c, v in zip(self.cols, vals)} for r, vals in zip(self.rows, self.values)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, float]]) -> Matrix:
        rows = list(d)
        cols = list(next(iter(d.values()))) if rows else []
        return cls(rows, cols, np.array([[float(d[r][c]) for c in cols] for r in rows]).reshape(len(rows), len(cols)))

    def to_csv(self, path: str | os.PathLike, corner: str = CORNER, digits: int | None = None) -> str:
        """Write a CSV: header `corner,col1,col2,...`, then one line per row."""
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow([corner, *self.cols])
            for r, vals in zip(self.rows, self.values):
                w.writerow([r, *(repr(float(v)) if digits is None else f"{v:.{digits}f}" for v in vals)])
        return path

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> Matrix:
        """Read a CSV whose first row holds column names (after a corner cell) and first column row names."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"matrix file {path!r} does not exist")
        with open(path, newline="") as f:
            lines = [row for row in csv.reader(f) if row and any(cell.strip() for cell in row)]
        if len(lines) < 2:
            raise ValueError(f"{path}: expected a header line and at least one data line")
        cols = [c.strip() for c in lines[0][1:]]
        rows, values = [], []
        for k, line in enumerate(lines[1:], start=2):
            if len(line) != len(cols) + 1:
                raise ValueError(f"{path}, line {k}: {len(line) - 1} values for {len(cols)} columns")
            rows.append(line[0].strip())
            try:
                values.append([float(x) for x in line[1:]])
            except ValueError as err:
                raise ValueError(f"{path}, line {k} (row {line[0]!r}): {err}") from None
        return cls(rows, cols, np.array(values))


def kendall_tau(x: Sequence[float], y: Sequence[float], variant: Literal["a", "b", "c"] = "b") -> float:
    """Kendall's tau between two rankings; `nan` when undefined (fewer than 2 items, or a constant input for b/c)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"kendall_tau needs two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    if len(x) < 2:
        return float("nan")
    if variant == "a":
        sx = np.sign(x[:, None] - x[None, :])
        sy = np.sign(y[:, None] - y[None, :])
        n = len(x)
        return float(np.triu(sx * sy, k=1).sum() / (n * (n - 1) / 2))
    if variant not in ("b", "c"):
        raise ValueError(f"variant must be 'a', 'b' or 'c', got {variant!r}")
    import warnings

    from scipy.stats import kendalltau

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input and returns nan, which we report
        return float(kendalltau(x, y, variant=variant).statistic)


@dataclass
class TauReport:
    """Per-target and per-source Kendall taus, their means and the headline (mean of the two means)."""

    variant: str
    exclude_diagonal: bool
    per_target: dict[str, float]
    per_source: dict[str, float]
    mean_target: float
    mean_source: float
    headline: float
    sources: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    undefined: list[str] = field(default_factory=list)  # rankings whose tau is nan (excluded from the means)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | os.PathLike) -> str:
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)
        return path

    def format(self, paper: Mapping[str, float] | None = None) -> str:
        """A plain-text report (per target, per source, means, headline); `paper` adds reference numbers."""
        paper = dict(paper or {})
        lines = [f"Kendall tau-{self.variant}" + (" (diagonal excluded)" if self.exclude_diagonal else "")]
        lines.append("per target (ranking sources):")
        lines += [f"  {t:<24} {v: .3f}" for t, v in self.per_target.items()]
        lines.append("per source (ranking targets):")
        lines += [f"  {s:<24} {v: .3f}" for s, v in self.per_source.items()]

        def ref(key: str) -> str:
            return f"   (paper {paper[key]:.3f})" if key in paper else ""

        lines.append(f"mean per-target tau: {self.mean_target:.3f}{ref('mean_target')}")
        lines.append(f"mean per-source tau: {self.mean_source:.3f}{ref('mean_source')}")
        lines.append(f"headline (mean of both): {self.headline:.3f}{ref('headline')}")
        if self.undefined:
            lines.append(f"undefined (constant ranking, left out of the means): {', '.join(self.undefined)}")
        return "\n".join(lines)


def _nanmean(values: Sequence[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else float("nan")


def evaluate_tau(
    predicted: Matrix,
    measured: Matrix,
    variant: Literal["a", "b", "c"] = "b",
    exclude_diagonal: bool = False,
) -> TauReport:
    """Per-target / per-source Kendall tau between `predicted` (e.g. M) and `measured` (e.g. Δ).

    Both matrices must have the same row (source) and column (target) names; `measured` is reordered to
    `predicted`'s order. With `exclude_diagonal`, the cell where source name == target name is left out of both
    the per-target and the per-source rankings.
    """
    if variant not in ("a", "b", "c"):
        raise ValueError(f"variant must be 'a', 'b' or 'c', got {variant!r}")
    measured = measured.reindex(predicted.rows, predicted.cols, what="measured vs predicted")
    P, D = predicted.values, measured.values
    keep = np.ones_like(P, dtype=bool)
    if exclude_diagonal:
        for i, r in enumerate(predicted.rows):
            if r in predicted.cols:
                keep[i, predicted.cols.index(r)] = False
    per_target = {t: kendall_tau(P[keep[:, j], j], D[keep[:, j], j], variant) for j, t in enumerate(predicted.cols)}
    per_source = {s: kendall_tau(P[i, keep[i]], D[i, keep[i]], variant) for i, s in enumerate(predicted.rows)}
    undefined = [f"target {k}" for k, v in per_target.items() if np.isnan(v)]
    undefined += [f"source {k}" for k, v in per_source.items() if np.isnan(v)]
    mt, ms = _nanmean(per_target.values()), _nanmean(per_source.values())
    return TauReport(
        variant=variant,
        exclude_diagonal=exclude_diagonal,
        per_target=per_target,
        per_source=per_source,
        mean_target=mt,
        mean_source=ms,
        headline=(mt + ms) / 2,
        sources=list(predicted.rows),
        targets=list(predicted.cols),
        undefined=undefined,
    )
