"""The report as one self-contained HTML page: inline CSS, pictures as data: URIs, no script, no network.

Sections: the models x tasks table (the best score of each task in bold, a cell whose settings differ from
the other runs of that task marked and explained on hover), runs that did not finish with their root cause,
the plots (`launcher/report_plots.py`), the settings that differ, every task's sub-metrics (one row per
`name/part` key of metrics.json and every other number, one column per run, shaded within the row), and
each run's per-rank timelines (`launcher/timeline_image.py`).
"""
from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Any, Sequence

from launcher.report import (Difference, RunResult, flagged_cells, format_score, headline, task_names)

TIMELINE_WIDTH = 1180   # pixels: one panel wide enough for the whole legend
STYLE = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Helvetica, Arial, sans-serif; margin: 24px 32px;
       color: #1d1d1f; background: #fff; font-size: 14px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid #ddd;
       padding-bottom: 4px; } h3 { font-size: 14px; margin: 14px 0 6px; }
.meta { color: #666; margin: 0 0 12px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0 10px; }
th, td { border: 1px solid #e2e2e2; padding: 4px 9px; text-align: right; vertical-align: top; white-space: nowrap; }
th { background: #f5f6f8; font-weight: 600; }
th.left, td.left { text-align: left; }
th .metric { display: block; font-weight: normal; color: #777; font-size: 11px; }
tr:nth-child(even) td { background-color: #fbfbfc; }
td .n { display: block; color: #888; font-size: 11px; }
td.best .score { font-weight: 700; }
td.flag { background: #fff4e0 !important; }
td.flag .score::after { content: " \\2260"; color: #c25400; font-weight: 700; }
.status-done { color: #1e7d32; } .status-failed, .status-stalled { color: #b3261e; font-weight: 600; }
.status-preempted, .status-running { color: #a15c00; font-weight: 600; }
.note { color: #a15c00; } .cause { color: #b3261e; }
figure { margin: 8px 0 16px; } figcaption { color: #666; font-size: 12px; }
img { max-width: 100%; border: 1px solid #eee; }
details { margin: 4px 0 8px; } summary { cursor: pointer; font-weight: 600; }
td.group { text-align: left; color: #555; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def _best(runs: Sequence[RunResult], task: str) -> float | None:
    scores = [run.tasks[task].score for run in runs if task in run.tasks and isinstance(run.tasks[task].score,
                                                                                      (int, float))]
    return max(scores) if len(scores) > 1 else None


def summary_table(runs: Sequence[RunResult], differences: Sequence[Difference]) -> str:
    tasks = task_names(runs)
    flags = flagged_cells(differences)
    best = {task: _best(runs, task) for task in tasks}
    head = "".join(f'<th>{_e(task)}<span class="metric">{_e(headline(runs, task))}</span></th>' for task in tasks)
    steps = any(run.step is not None for run in runs)   # a step column only where some name has a step
    lines = [f'<table id="summary"><thead><tr><th class="left">model</th>{"<th>step</th>" if steps else ""}{head}'
             '<th>date</th><th class="left">status</th></tr></thead><tbody>']
    for run in runs:
        cells = []
        for task in tasks:
            result = run.tasks.get(task)
            if result is None:
                cells.append('<td class="missing">-</td>')
                continue
            classes = []
            title = f"{task}: {result.metric} {format_score(result.score)} ({result.scale}), {result.date}"
            if best[task] is not None and result.score == best[task]:
                classes.append("best")
            if (run.label, task) in flags:
                classes.append("flag")
                title += "; settings: " + "; ".join(f"{d.key} = {_value(d.values[run.label])} (others: "
                                                    f"{_value(d.usual)})" for d in flags[(run.label, task)])
            skipped = f" · {result.n_skipped} skipped" if result.n_skipped else ""
            cells.append(f'<td class="{" ".join(classes)}" title="{_e(title)}" data-task="{_e(task)}">'
                         f'<span class="score">{_e(format_score(result.score))}</span>'
                         f'<span class="n">n={_e(result.n)}{_e(skipped)}</span></td>')
        dates = [result.date for result in run.tasks.values()]
        status = run.status or "-"
        cause = f' title="{_e(run.cause)}"' if run.cause else ""
        step = f'<td>{"" if run.step is None else run.step}</td>' if steps else ""
        lines.append(f'<tr data-model="{_e(run.label)}"><td class="left">{_e(run.label)}</td>{step}{"".join(cells)}'
                     f'<td>{_e(max(dates) if dates else "-")}</td>'
                     f'<td class="left status-{_e(status)}"{cause}>{_e(status)}</td></tr>')
    lines.append("</tbody></table>")
    return "\n".join(lines)


def differences_section(runs: Sequence[RunResult], differences: Sequence[Difference]) -> str:
    if not differences:
        compared = [task for task in task_names(runs) if sum(task in run.tasks for run in runs) > 1]
        if not compared:
            return "<p>No task was run by more than one model: nothing to compare.</p>"
        return ("<p>Every run of each task used the same generation settings, dtype, tiling, metric, data file and "
                "library versions.</p>")
    rows = ['<table id="differences"><thead><tr><th class="left">task</th><th class="left">setting</th>'
            '<th class="left">usual value</th><th class="left">runs that differ</th></tr></thead><tbody>']
    for difference in differences:
        odd = ", ".join(f"{label}: <b>{_e(_value(difference.values[label]))}</b>" for label in difference.odd_runs())
        rows.append(f'<tr><td class="left">{_e(difference.task)}</td><td class="left"><code>{_e(difference.key)}'
                    f'</code></td><td class="left">{_e(_value(difference.usual))}</td><td class="left">{odd}</td></tr>')
    rows.append("</tbody></table>")
    return ('<p class="note">These settings are not the same in every run of a task: the scores are not '
            'strictly comparable (cells marked &#8800; above).</p>\n' + "\n".join(rows))


def _numbers(result_metrics: dict[str, Any], headline_metric: str) -> list[str]:
    return [key for key, value in result_metrics.items()
            if key != headline_metric and isinstance(value, (int, float)) and not isinstance(value, bool)]


def submetrics_section(runs: Sequence[RunResult]) -> str:
    """Per task: one row per sub-metric (`subtask/score`, `category/...`, totals), one column per run."""
    parts = []
    for task in task_names(runs):
        holders = [run for run in runs if task in run.tasks]
        keys: list[str] = []
        for run in holders:
            result = run.tasks[task]
            keys += [key for key in _numbers(result.metrics, result.metric) if key not in keys]
        if not keys:
            continue
        # Plain numbers (totals) first, then the name/part keys grouped by name, in metrics.json's order.
        keys = [key for key in keys if "/" not in key] + [key for key in keys if "/" in key]
        head = "".join(f"<th>{_e(run.label)}</th>" for run in holders)
        rows = [f'<details open><summary>{_e(task)} ({len(keys)} sub-metrics)</summary><div class="scroll">'
                f'<table class="submetrics" data-task="{_e(task)}"><thead><tr><th class="left">group</th>'
                f'<th class="left">metric</th>{head}</tr></thead><tbody>']
        previous_group = None
        for key in keys:
            group, _, name = key.rpartition("/")
            values = [run.tasks[task].metrics.get(key) for run in holders]
            numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            low, high = (min(numbers), max(numbers)) if numbers else (0, 0)
            cells = []
            for value in values:
                shade = ""
                if isinstance(value, (int, float)) and high > low:
                    alpha = 0.08 + 0.35 * (value - low) / (high - low)
                    shade = f' style="background-color: rgba(46,139,87,{alpha:.2f})"'
                cells.append(f"<td{shade}>{_e(format_score(value))}</td>")
            shown_group = group if group != previous_group else ""
            previous_group = group
            rows.append(f'<tr data-key="{_e(key)}"><td class="group">{_e(shown_group)}</td><td class="left">'
                        f'{_e(name)}</td>{"".join(cells)}</tr>')
        rows.append("</tbody></table></div></details>")
        parts.append("\n".join(rows))
    return "\n".join(parts) or "<p>No task reported sub-metrics.</p>"


def unfinished_section(runs: Sequence[RunResult]) -> str:
    unfinished = [run for run in runs if run.status not in (None, "done")]
    if not unfinished:
        return ""
    items = "".join(f'<li><b>{_e(run.label)}</b>: <span class="status-{_e(run.status)}">{_e(run.status)}</span>'
                    + (f' <span class="cause">{_e(run.cause)}</span>' if run.cause else "") + "</li>"
                    for run in unfinished)
    return (f'<h2 id="unfinished">Runs that did not finish</h2><p>Rerun the same command (or sweep) to resume them '
            f'from their journals.</p><ul>{items}</ul>')


def plots_section(runs: Sequence[RunResult], warnings: list[str]) -> str:
    from launcher import report_plots

    reason = report_plots.missing()
    if reason is not None:
        warnings.append(reason)
        return f'<p class="note">{_e(reason)}.</p>'
    figures = []
    stepped = report_plots.step_plot(runs)
    if stepped is not None:
        figures.append(f'<figure><img alt="score against training step" class="plot" src="{data_uri(stepped)}">'
                       '<figcaption>Score against training step (runs whose names carry a step), one panel per '
                       'task.</figcaption></figure>')
    bars = report_plots.bar_plot(runs)
    if bars is not None:
        figures.append(f'<figure><img alt="score per task" class="plot" src="{data_uri(bars)}">'
                       '<figcaption>Score per task (runs whose names carry no step).</figcaption></figure>')
    return "\n".join(figures) or "<p>No scores to plot.</p>"


def timelines_section(runs: Sequence[RunResult]) -> str:
    from launcher import timeline_image

    blocks = []
    for run in runs:
        images = []
        for task, result in run.tasks.items():
            if result.manifest is None or not timeline_image.has_timelines(result.manifest, task):
                continue
            buffer = io.BytesIO()
            timeline_image.render([result.manifest], task, buffer, [run.label], panel_width=TIMELINE_WIDTH)
            images.append(f'<figure><img alt="per-rank timeline of {_e(run.label)} on {_e(task)}" class="timeline" '
                          f'src="{data_uri(buffer.getvalue())}"></figure>')
        if images:  # the first run open: what the picture shows is seen at once
            blocks.append(f"<details{' open' if not blocks else ''}><summary>{_e(run.label)} ({len(images)} "
                          f"task(s))</summary>" + "".join(images) + "</details>")
    if not blocks:
        return "<p>No run recorded per-rank timelines.</p>"
    return ("<p>Per rank: loading, each batch (generate + journal), idle time, and the wait for the slowest rank "
            "(from run.json).</p>" + "\n".join(blocks))


def render_page(results_dir: Path, runs: Sequence[RunResult], differences: Sequence[Difference],
                plots: bool = True, timelines: bool = True) -> tuple[str, list[str]]:
    """The whole page and the warnings to print (e.g. matplotlib missing)."""
    warnings: list[str] = []
    tasks = task_names(runs)
    notes = ""
    if differences:
        notes = (f'<p class="note">&#8800; marks a score whose run used other settings than the other runs of that '
                 f'task: see <a href="#settings">Settings that differ</a>.</p>')
    body = [
        f"<h1>Evaluation report</h1>",
        f'<p class="meta">{_e(results_dir.resolve())} · {len(runs)} run(s) · {len(tasks)} task(s) · generated '
        f'{_e(time.strftime("%Y-%m-%d %H:%M"))}</p>',
        '<h2 id="scores">Scores</h2><div class="scroll">', summary_table(runs, differences), "</div>", notes,
        unfinished_section(runs),
    ]
    if plots:
        body += ['<h2 id="plots">Plots</h2>', plots_section(runs, warnings)]
    body += ['<h2 id="settings">Settings that differ</h2>', differences_section(runs, differences),
             '<h2 id="submetrics">Sub-metrics</h2>', submetrics_section(runs)]
    if timelines:
        body += ['<h2 id="timelines">Per-rank timelines</h2>', timelines_section(runs)]
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Evaluation report: {_e(results_dir.resolve().name)}</title><style>{STYLE}</style></head>\n"
            "<body>\n" + "\n".join(part for part in body if part) + "\n</body></html>\n")
    return page, warnings
