"""`mixwise report RUN_DIR`: one self-contained HTML page (images embedded) describing a run.

It reads what a run leaves behind — `selection.json`, the method's signal files, and the trainer's
`trainer_state.json` (its `log_history`) — and draws:

* the allocation: weight and planned rows per source;
* the method's own view: the DataProphet metric heatmap (sources × targets), the ICONS vote histogram and the
  per-task overlap of top sets, or the CADC capability map (subtask × capability) and stage sizes, when the
  manifest or the run directory holds them;
* training curves: the loss, per-source / per-target probe losses (`probe_loss/<name>`) and, for GRPO, the
  reward and its per-source means (`rewards_by_source/<source>/<reward>`).

Everything missing is skipped, so the page can be built for any run.
"""

from __future__ import annotations

import html
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

from .plan import MANIFEST_NAME, Plan
from .plots import figure, figure_data_uri, heatmap_figure


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


def allocation_chart(plan: Plan) -> str:
    names = list(plan.sources)
    fig = figure(max(5, 0.7 * len(names) + 2), 3.2)
    ax = fig.add_subplot()
    counts = [plan.sources[n].count for n in names]
    bars = ax.bar(names, counts, color="#4C72B0")
    for bar, n in zip(bars, names):
        ax.annotate(
            f"{plan.sources[n].weight:.2f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_ylabel("planned rows")
    ax.set_title(f"{plan.method}: {plan.budget} rows (labels: weights)")
    ax.tick_params(axis="x", rotation=45)
    return figure_data_uri(fig)


def heatmap_chart(matrix: dict[str, dict[str, float]], title: str, xlabel: str, ylabel: str) -> str:
    """A heatmap of `{row: {column: value}}` (rows on the y axis)."""
    rows = list(matrix)
    cols = list(next(iter(matrix.values())))
    values = [[float(matrix[r][c]) for c in cols] for r in rows]
    return figure_data_uri(heatmap_figure(values, rows, cols, title=title, xlabel=xlabel, ylabel=ylabel))


def vote_histogram_chart(histogram: dict[str, list[int]]) -> str:
    """Bars of how many pool samples got k votes (`all`), with the selected ones (`selected`) on top."""
    fig = figure(5, 3)
    ax = fig.add_subplot()
    ks = list(range(len(histogram["all"])))
    ax.bar(ks, histogram["all"], color="#BBBBBB", label="pool")
    if histogram.get("selected"):
        ax.bar(ks, histogram["selected"], color="#55A868", label="selected")
        ax.legend(fontsize=8)
    ax.set_xlabel("votes (tasks whose top set holds the sample)")
    ax.set_ylabel("samples")
    ax.set_title("ICONS votes")
    return figure_data_uri(fig)


def curves_chart(series: dict[str, list[tuple[float, float]]], title: str, ylabel: str) -> str:
    fig = figure(6, 3.2)
    ax = fig.add_subplot()
    for name, points in sorted(series.items()):
        xs, ys = zip(*points)
        ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend(fontsize=7, loc="best")
    return figure_data_uri(fig)


def _series(history: list[dict[str, Any]], match) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for entry in history:
        step = entry.get("step")
        if step is None:
            continue
        for key, value in entry.items():
            name = match(key)
            if name is not None and isinstance(value, int | float):
                out[name].append((step, float(value)))
    return dict(out)


def _prefixed(prefix: str):
    return lambda key: key[len(prefix) :] if key.startswith(prefix) else None


def _stage_table(plan: Plan) -> str:
    """The staged plan as a table: one row per stage (in training order), rows per source."""
    if not plan.stages:
        return ""
    names = list(plan.sources)
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = ""
    for k, stage in enumerate(plan.stages):
        label = html.escape(str(stage.extra.get("capability", k)))
        cells = "".join(f"<td>{stage.sources[n].count}</td>" for n in names)
        body += f"<tr><td>{k + 1}: {label}</td><td>{stage.budget}</td>{cells}</tr>"
    return f"<h2>CADC stages</h2><table><tr><th>stage</th><th>rows</th>{head}</tr>{body}</table>"


def build_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write `RUN_DIR/report.html` (or `out`) and return its path."""
    run_dir = Path(run_dir)
    manifest = run_dir / MANIFEST_NAME
    if not manifest.exists():
        raise FileNotFoundError(f"{run_dir} has no {MANIFEST_NAME}: not a mixwise run directory")
    plan = Plan.load(manifest)
    sections: list[tuple[str, str]] = [("Allocation", allocation_chart(plan))]

    extra = plan.extra or {}
    metric = extra.get("metric") or extra.get("M")
    if isinstance(metric, dict) and metric:
        sections.append(("DataProphet metric M(s→t)", heatmap_chart(metric, "M(source → target)", "target", "source")))
    histogram = extra.get("vote_histogram")
    if isinstance(histogram, dict) and histogram.get("all"):
        sections.append(("ICONS votes", vote_histogram_chart(histogram)))
    overlap, tasks = extra.get("top_set_overlap"), extra.get("tasks")
    if overlap and tasks and len(tasks) > 1:
        matrix = {a: {b: overlap[i][j] for j, b in enumerate(tasks)} for i, a in enumerate(tasks)}
        sections.append(
            (
                "Overlap of per-task top sets",
                heatmap_chart(matrix, "overlap of per-task top sets", "task whose top set is compared", "task"),
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
    stage_table = _stage_table(plan)

    history = find_log_history(run_dir)
    loss = _series(history, lambda k: "train loss" if k == "loss" else None)
    if loss:
        sections.append(("Training loss", curves_chart(loss, "training loss", "loss")))
    probes = _series(history, _prefixed("probe_loss/"))
    if probes:
        sections.append(("Loss per source / target (probe sets)", curves_chart(probes, "probe loss", "loss")))
    reward = _series(history, lambda k: "reward" if k == "reward" else None)
    if reward:
        sections.append(("Reward", curves_chart(reward, "mean reward", "reward")))
    by_source = _series(history, _prefixed("rewards_by_source/"))
    if by_source:
        sections.append(("Reward per source", curves_chart(by_source, "mean reward per source", "reward")))

    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{s.weight:.4f}</td><td>{s.count}</td><td>{s.size}</td>"
        f"<td>{'yes' if s.repeated else ''}</td></tr>"
        for n, s in plan.sources.items()
    )
    skipped = "".join(
        f"<li>{html.escape(n)}: {r.get('skipped', 0)} rows skipped ({html.escape(json.dumps(r.get('by_reason', {})))})</li>"
        for n, r in (plan.skipped or {}).items()
    )
    figures = "".join(
        f'<section><h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" src="{uri}"></section>'
        for title, uri in sections
    )
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>mixwise report: {html.escape(plan.method)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}
td:first-child{{text-align:left}}img{{max-width:100%}}</style></head>
<body><h1>mixwise run report</h1>
<p>Method <b>{html.escape(plan.method)}</b>, budget {plan.budget} rows, seed {plan.seed}, mixwise {html.escape(plan.version)}.</p>
<table><tr><th>source</th><th>weight</th><th>rows</th><th>size</th><th>repeats</th></tr>{rows}</table>
{f"<h2>Skipped rows</h2><ul>{skipped}</ul>" if skipped else ""}
{figures}
{stage_table}
<h2>Configuration</h2><pre>{html.escape(json.dumps(plan.config, indent=2, default=str))}</pre>
</body></html>
"""
    out_path = Path(out) if out is not None else run_dir / "report.html"
    out_path.write_text(page)
    return out_path
