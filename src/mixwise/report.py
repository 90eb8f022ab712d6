"""`mixwise report RUN [RUN ...]`: one self-contained HTML page (images embedded) describing runs side by side.

It reads what a run leaves behind — `selection.json` (the plan, the method's signals in its `extra`),
`consumed.json` (rows actually trained on, per source), the trainer's `trainer_state.json` (its `log_history`) —
and draws, one colour per run in every chart:

* a summary table (method, budget, seed, model, steps, final loss, final target metrics);
* the allocation: planned rows per source for every run (labels: weights), and planned vs consumed rows;
* training curves: the loss; the training loss per source (`train_loss_by_source/<source>`); the probe losses per
  target (`probe_loss/<target>`); the targets' metrics (`eval/<target>/<metric>`); for GRPO, the reward and its
  per-source means (`rewards_by_source/<source>/<reward>`);
* each run's method signals: DataProphet's M(s→t) and its five terms, ICONS's vote histogram and the overlap of the
  per-task top sets, CADC's capability map, self-influence curves and stages.

Everything missing is skipped, so the page can be built for any runs. Needs `mixwise[report]` (matplotlib).
"""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .plan import MANIFEST_NAME, Plan
from .plots import (
    RUN_COLOURS,
    figure,
    figure_data_uri,
    grouped_bars_figure,
    heatmap_figure,
    heatmaps_figure,
    small_multiples_figure,
)

__all__ = ["RunRecord", "build_report", "find_log_history", "load_run", "series"]

TERM_TITLES = {
    "qsim": "QSim (questions)",
    "asim": "ASim (answers)",
    "isim": "ISim (images)",
    "ppl_ratio": "PPL(s) / PPL(t)",
    "diversity": "Sil(s) + H(s)",
}


@dataclass
class RunRecord:
    """One run as the report reads it."""

    name: str
    path: Path
    plan: Plan
    history: list[dict[str, Any]] = field(default_factory=list)
    consumed: dict[str, Any] | None = None


def find_log_history(run_dir: Path) -> list[dict[str, Any]]:
    """`log_history` of the run's `trainer_state.json` (top level, else the latest checkpoint's)."""
    candidates = [run_dir / "trainer_state.json"]
    checkpoints = sorted(
        run_dir.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[-1])
    )
    candidates += checkpoints[::-1]
    for path in candidates:
        if path.exists():
            return json.loads(path.read_text()).get("log_history", [])
    return []


def load_run(run_dir: str | os.PathLike, name: str | None = None) -> RunRecord:
    """Read a run directory (it must hold a `selection.json`)."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST_NAME).exists():
        raise FileNotFoundError(f"{run_dir} has no {MANIFEST_NAME}: not a mixwise run directory")
    consumed_path = run_dir / "consumed.json"
    consumed = json.loads(consumed_path.read_text()) if consumed_path.exists() else None
    return RunRecord(
        name=name or run_dir.resolve().name,
        path=run_dir,
        plan=Plan.load(run_dir),
        history=find_log_history(run_dir),
        consumed=consumed,
    )


def series(history: list[dict[str, Any]], prefix: str) -> dict[str, list[tuple[float, float]]]:
    """`{name: [(step, value), ...]}` of the logged keys `prefix + name` (`prefix` itself: the key `prefix`)."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            if key == prefix:
                out[prefix].append((step, float(value)))
            elif prefix.endswith("/") and key.startswith(prefix):
                out[key[len(prefix) :]].append((step, float(value)))
    return dict(out)


def _unique_names(runs: Sequence[RunRecord]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f"{run.name} ({seen[run.name]})"
        else:
            seen[run.name] = 1


def _colours(runs: Sequence[RunRecord]) -> dict[str, str]:
    return {run.name: RUN_COLOURS[k % len(RUN_COLOURS)] for k, run in enumerate(runs)}


# -- charts -----------------------------------------------------------------------------------------------------------


def allocation_chart(runs: Sequence[RunRecord]) -> str:
    names = list(dict.fromkeys(n for run in runs for n in run.plan.sources))
    values = {run.name: [run.plan.sources[n].count if n in run.plan.sources else 0 for n in names] for run in runs}
    labels = {
        run.name: [f"{run.plan.sources[n].weight:.2f}" if n in run.plan.sources else "" for n in names] for run in runs
    }
    title = "planned rows per source (labels: weights)"
    if len(runs) == 1:
        title = f"{runs[0].plan.method}: {runs[0].plan.budget} rows (labels: weights)"
    return figure_data_uri(
        grouped_bars_figure(
            names, values, title=title, ylabel="planned rows", colours=list(_colours(runs).values()), labels=labels
        )  # fmt: skip
    )


def consumption_chart(runs: Sequence[RunRecord]) -> str | None:
    """Planned vs consumed rows per source, one panel per run with a `consumed.json`."""
    with_counts = [run for run in runs if run.consumed and run.consumed.get("consumed")]
    if not with_counts:
        return None
    fig = figure(max(5.0, 4.2 * len(with_counts)), 3.4)
    for k, run in enumerate(with_counts):
        ax = fig.add_subplot(1, len(with_counts), k + 1)
        planned = run.consumed.get("planned") or run.plan.counts
        names = list(dict.fromkeys([*planned, *run.consumed["consumed"]]))
        xs = range(len(names))
        colour = _colours(runs)[run.name]
        ax.bar([x - 0.2 for x in xs], [planned.get(n, 0) for n in names], 0.4, label="planned", color="#BBBBBB")
        ax.bar([x + 0.2 for x in xs], [run.consumed["consumed"].get(n, 0) for n in names], 0.4, label="consumed",
               color=colour)  # fmt: skip
        ax.set_xticks(list(xs), names, rotation=45, ha="right", fontsize=7)
        ax.set_title(run.name, fontsize=9)
        ax.set_ylabel("rows")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_data_uri(fig)


def compared_curves(runs: Sequence[RunRecord], prefix: str, ylabel: str) -> str | None:
    """Small multiples of the logged `prefix<name>` series: one panel per name, one line per run (a single
    panel for a plain key such as `loss`)."""
    panels: dict[str, dict[str, list[tuple[float, float]]]] = defaultdict(dict)
    for run in runs:
        for name, points in series(run.history, prefix).items():
            panels[name][run.name] = points
    if not panels:
        return None
    colours = _colours(runs)
    return figure_data_uri(small_multiples_figure(dict(sorted(panels.items())), ylabel=ylabel, colours=colours))


def vote_histogram_chart(histogram: dict[str, list[int]]) -> str:
    """Bars of how many pool rows got k votes (`all`), with the selected ones beside them (`selected`)."""
    ks = [str(k) for k in range(len(histogram["all"]))]
    values = {"pool": histogram["all"]}
    if histogram.get("selected"):
        values["selected"] = histogram["selected"]
    fig = grouped_bars_figure(ks, values, title="ICONS votes", ylabel="rows", colours=["#BBBBBB", "#55A868"])
    fig.axes[0].set_xlabel("votes (target tasks whose top set holds the row)")
    return figure_data_uri(fig)


def heatmap_chart(matrix: dict[str, dict[str, float]], title: str, xlabel: str, ylabel: str, **kwargs: Any) -> str:
    """A heatmap of `{row: {column: value}}` (rows on the y axis)."""
    rows = list(matrix)
    cols = list(next(iter(matrix.values())))
    values = [[float(matrix[r][c]) for c in cols] for r in rows]
    return figure_data_uri(heatmap_figure(values, rows, cols, title=title, xlabel=xlabel, ylabel=ylabel, **kwargs))


def dataprophet_terms_chart(terms: dict[str, dict[str, dict[str, float]]]) -> str:
    """The five factors of M(s→t) side by side (sources × targets)."""
    panels = []
    for name, matrix in terms.items():
        rows = list(matrix)
        cols = list(next(iter(matrix.values())))
        panels.append(
            dict(
                values=[[float(matrix[r][c]) for c in cols] for r in rows],
                rows=rows,
                cols=cols,
                title=TERM_TITLES.get(name, name),
                xlabel="target",
                ylabel="source",
            )  # fmt: skip
        )
    return figure_data_uri(heatmaps_figure(panels, ncols=3))


def self_influence_chart(curves: dict[str, list[float]]) -> str:
    fig = figure(5, 3)
    ax = fig.add_subplot()
    for name, values in curves.items():
        ax.plot(range(1, len(values) + 1), values, marker=".", label=name)
    ax.set_xlabel("warm-up checkpoint")
    ax.set_ylabel("mean self-influence")
    ax.set_title("CADC: self-influence per capability (fastest drop trained first)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return figure_data_uri(fig)


def method_sections(run: RunRecord) -> list[tuple[str, str]]:
    """`[(title, image uri)]` of a run's method signals."""
    extra = run.plan.extra or {}
    sections = []
    metric = extra.get("metric") or extra.get("M")
    if isinstance(metric, dict) and metric:
        sections.append(("DataProphet metric M(s→t)", heatmap_chart(metric, "M(source → target)", "target", "source")))
    terms = extra.get("terms")
    if isinstance(terms, dict) and terms:
        sections.append(("DataProphet terms (M is their cell-wise product)", dataprophet_terms_chart(terms)))
    histogram = extra.get("vote_histogram")
    if isinstance(histogram, dict) and histogram.get("all"):
        sections.append(("ICONS votes", vote_histogram_chart(histogram)))
    overlap, tasks = extra.get("top_set_overlap"), extra.get("tasks")
    if overlap and tasks and len(tasks) > 1:
        # symmetric: overlap[a][b] = |top(a) ∩ top(b)| / n_select, the same target tasks on both axes
        matrix = {a: {b: 100 * overlap[i][j] for j, b in enumerate(tasks)} for i, a in enumerate(tasks)}
        sections.append(
            (
                "Overlap of per-task top sets",
                heatmap_chart(
                    matrix,
                    "rows two target tasks' top sets share (%)",
                    "target task",
                    "target task",
                    cell_format="{:.0f}",
                    vmin=0,
                    vmax=100,
                ),  # fmt: skip
            )
        )
    capability_map = extra.get("capability_map")
    if isinstance(capability_map, dict) and capability_map:
        sections.append(
            (
                "CADC capability map",
                heatmap_chart(capability_map, "subtask → capability", "capability", "target subtask"),
            )
        )
    curves = extra.get("self_influence_curves")
    if isinstance(curves, dict) and curves and all(isinstance(v, list) and v for v in curves.values()):
        sections.append(("CADC self-influence", self_influence_chart(curves)))
    return sections


# -- tables -----------------------------------------------------------------------------------------------------------


def _last(history: list[dict[str, Any]], key: str) -> float | None:
    for entry in reversed(history):
        value = entry.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def _fmt(value: Any) -> str:
    return "" if value is None else (f"{value:.4g}" if isinstance(value, float) else html.escape(str(value)))


def summary_table(runs: Sequence[RunRecord]) -> str:
    metric_keys = sorted({k for run in runs for e in run.history for k in e if k.startswith("eval/")})
    probe_keys = sorted({k for run in runs for e in run.history for k in e if k.startswith("probe_loss/")})
    rows = [
        ("method", [run.plan.method for run in runs]),
        ("budget (rows)", [run.plan.budget for run in runs]),
        ("seed", [run.plan.seed for run in runs]),
        ("model", [(run.plan.fingerprints or {}).get("model") for run in runs]),
        ("steps", [max((e.get("step", 0) for e in run.history), default=None) for run in runs]),
        (
            "rows trained on",
            [sum(run.consumed["consumed"].values()) if run.consumed else None for run in runs],
        ),
        ("final training loss", [_last(run.history, "loss") for run in runs]),
        *[(f"final {k}", [_last(run.history, k) for run in runs]) for k in metric_keys],
        *[(f"final {k}", [_last(run.history, k) for run in runs]) for k in probe_keys],
    ]
    colours = _colours(runs)
    head = "".join(
        f'<th><span class="swatch" style="background:{colours[run.name]}"></span>{html.escape(run.name)}</th>'
        for run in runs
    )
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>{''.join(f'<td>{_fmt(v)}</td>' for v in values)}</tr>"
        for label, values in rows
        if any(v is not None for v in values)
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def sources_table(run: RunRecord) -> str:
    consumed = (run.consumed or {}).get("consumed", {})
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{s.weight:.4f}</td><td>{s.count}</td>"
        f"<td>{consumed.get(n, 0) if run.consumed else ''}</td><td>{s.size}</td>"
        f"<td>{'yes' if s.repeated else ''}</td></tr>"
        for n, s in run.plan.sources.items()
    )
    return (
        "<table><tr><th>source</th><th>weight</th><th>planned</th><th>consumed</th><th>size</th><th>repeats</th></tr>"
        f"{rows}</table>"
    )


def stage_table(plan: Plan) -> str:
    """The staged plan as a table: one row per stage (in training order), rows per source."""
    if not plan.stages:
        return ""
    names = list(plan.sources)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = ""
    for k, stage in enumerate(plan.stages):
        label = html.escape(str((stage.extra or {}).get("capability", k)))
        cells = "".join(f"<td>{stage.sources[n].count}</td>" for n in names)
        body += f"<tr><td>{k + 1}: {label}</td><td>{stage.budget}</td>{cells}</tr>"
    return f"<h3>CADC stages</h3><table><tr><th>stage</th><th>rows</th>{head}</tr>{body}</table>"


def _figure(title: str, uri: str) -> str:
    return (
        f'<figure><img alt="{html.escape(title)}" src="{uri}"><figcaption>{html.escape(title)}</figcaption></figure>'
    )


# -- the page ---------------------------------------------------------------------------------------------------------

CURVES = [
    ("Training loss", "loss", "loss"),
    ("Training loss per source", "train_loss_by_source/", "loss"),
    ("Loss per target (probe sets)", "probe_loss/", "loss"),
    ("Target metrics", "eval/", "score"),
    ("Reward", "reward", "reward"),
    ("Reward per source", "rewards_by_source/", "reward"),
]


def build_report(
    runs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike | None = None,
    names: Sequence[str] | None = None,
) -> Path:
    """Write the report of one run (`RUN/report.html` by default) or of several side by side (`out`, by default
    `report.html` in the current directory) and return its path."""
    paths = [runs] if isinstance(runs, str | os.PathLike) else list(runs)
    if not paths:
        raise ValueError("no runs to report on")
    records = [load_run(p, name) for p, name in zip(paths, names or [None] * len(paths))]
    _unique_names(records)

    parts = [f"<h2>Runs</h2>{summary_table(records)}"]
    parts.append(f"<h2>Allocation</h2>{_figure('Allocation', allocation_chart(records))}")
    consumption = consumption_chart(records)
    if consumption:
        parts.append(_figure("Planned vs consumed rows", consumption))
    for title, prefix, ylabel in CURVES:
        uri = compared_curves(records, prefix, ylabel)
        if uri:
            parts.append(f"<h2>{html.escape(title)}</h2>{_figure(title, uri)}")
    for run in records:
        skipped = "".join(
            f"<li>{html.escape(n)}: {r.get('skipped', 0)} rows skipped "
            f"({html.escape(json.dumps(r.get('by_reason', {})))})</li>"
            for n, r in (run.plan.skipped or {}).items()
        )
        method = "".join(_figure(t, uri) for t, uri in method_sections(run))
        parts.append(
            f"<h2>{html.escape(run.name)}: {html.escape(run.plan.method)}</h2>"
            f"<p>{html.escape(str(run.path))} — budget {run.plan.budget} rows, seed {run.plan.seed}, "
            f"mixwise {html.escape(run.plan.version)}.</p>{sources_table(run)}"
            f"{f'<h3>Skipped rows</h3><ul>{skipped}</ul>' if skipped else ''}{method}{stage_table(run.plan)}"
            f"<details><summary>Configuration</summary><pre>"
            f"{html.escape(json.dumps(run.plan.config, indent=2, default=str))}</pre></details>"
        )
    title = "mixwise run report" if len(records) == 1 else f"mixwise report: {len(records)} runs compared"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}figure{{margin:0.5em 0}}
figcaption{{font-size:0.8em;color:#666}}.swatch{{display:inline-block;width:0.8em;height:0.8em;margin-right:0.3em}}
</style></head>
<body><h1>{html.escape(title)}</h1>
{"".join(parts)}
</body></html>
"""
    if out is None:
        out_path = records[0].path / "report.html" if len(records) == 1 else Path("report.html")
    else:
        out_path = Path(out)
    out_path.write_text(page)
    return out_path
