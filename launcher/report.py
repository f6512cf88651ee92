"""`python -m launcher report RESULTS_DIR [--out report.html]`: one table and one page for every run under a folder.

    python -m launcher report results/                      # table on the terminal; results/report.{html,csv,md}
    python -m launcher report results/ --out /tmp/cmp.html  # /tmp/cmp.html, /tmp/cmp.csv, /tmp/cmp.md

It reads every `<run>/<task>/metrics.json` and `<run>/run.json` under the folder, any mix of sweeps
(`python -m launcher sweep`) and single runs, and writes

- a table of models x tasks (score, n, skipped items, date), printed here and saved as Markdown, and as
  CSV with one row per (model, task) for spreadsheets;
- a self-contained HTML page (`launcher/report_html.py`: nothing loaded from the network, pictures embedded)
  with that table, the settings that differ between runs compared on a task (generation settings, dtype,
  tiling, library versions) flagged, every task's sub-metrics (MME subtasks, POPE categories, MMBench
  categories: the `name/part` keys of metrics.json), runs that did not finish with their root cause, and
  plots: score against training step when the run names carry one (`checkpoint-1000`, `step_2000`,
  `iter_0003000`), bars per task otherwise (matplotlib: `pip install 'vlm-eval-launcher[report]'`; without
  it the page says so and has the rest), and the per-rank timeline each run recorded
  (`launcher/timeline_image.py`, PIL only).

A model's name is its run folder relative to RESULTS_DIR. A task's settings come from its
fingerprint.json (what a resume must not change) and the library versions from the run.json that ran it;
when a later run of a sweep covered only other tasks, the earlier run.json kept under `earlier-runs/` is used.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from launcher.coordination import describe_failure
from launcher.errors import EXIT_USER_ERROR, UserError
from launcher.outputs import EARLIER_RUNS, atomic_write_text, read_json

VERSION_KEYS = ("transformers", "torch", "accelerate", "bitsandbytes")
# A training step in a run name: checkpoint-1000, step_2000, iter_0003000, global_step500, ckpt-7.
_STEP = re.compile(r"(?<![A-Za-z])(checkpoint|ckpt|global_step|step|steps|iter|iteration|it)[-_]?(\d+)(?!\d)",
                   re.IGNORECASE)


@dataclass(frozen=True)
class TaskResult:
    """One task's result in one run: metrics.json plus where and how it was made."""

    task: str
    metric: str
    scale: str
    score: float | None
    n: int | None
    n_skipped: int | None
    metrics: dict[str, Any]
    date: str
    settings: dict[str, Any]
    manifest: dict[str, Any] | None = field(default=None, compare=False, repr=False)   # the run.json that ran it


@dataclass(frozen=True)
class RunResult:
    """One run folder: its name, training step (if its name has one) and every task it finished."""

    label: str
    run_dir: Path
    step: int | None
    series: str                       # the name with the step replaced by "*": the runs of one training
    status: str | None                # run.json's status; None when there is no run.json
    cause: str | None
    tasks: dict[str, TaskResult]


def step_of(name: str) -> tuple[int | None, str]:
    """(training step, series) of a run name: ("checkpoint-1000") -> (1000, "checkpoint-*"); (None, name)."""
    leaf = name.rsplit("/", 1)[-1]
    matches = list(_STEP.finditer(leaf))
    if not matches:
        return None, name
    match = matches[-1]
    prefix = name[:len(name) - len(leaf)]
    return int(match.group(2)), prefix + leaf[:match.start(2)] + "*" + leaf[match.end(2):]


# ------------------------------------------------------------------------------------------- reading

def _read(path: Path) -> Any:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _date(text: str | None, fallback: Path) -> str:
    """run.json's timestamp (2026-12-02T03:10:43+0000) or a file's mtime, as '2026-12-02 03:10'."""
    if text and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d", text):
        return text[:10] + " " + text[11:16]
    try:
        return time.strftime("%Y-%m-%d %H:%M", time.localtime(fallback.stat().st_mtime))
    except OSError:
        return "?"


def _manifests(run_dir: Path) -> list[dict[str, Any]]:
    """run.json first, then the earlier ones a sweep kept, newest first."""
    found = []
    current = _read(run_dir / "run.json")
    if isinstance(current, dict):
        found.append(current)
    for path in sorted((run_dir / EARLIER_RUNS).glob("run-*.json"), reverse=True):
        earlier = _read(path)
        if isinstance(earlier, dict):
            found.append(earlier)
    return found


def task_settings(fingerprint: dict[str, Any] | None, manifest: dict[str, Any] | None) -> dict[str, Any]:
    """The settings a comparison of this task's scores depends on, flat: generation.*, model_settings.*,
    the task's metric and data file, and the versions of the libraries that ran it."""
    settings: dict[str, Any] = {}
    fingerprint = fingerprint or {}
    for section in ("generation", "model_settings"):
        for key, value in (fingerprint.get(section) or {}).items():
            settings[f"{section}.{key}"] = value
    for key in ("metric", "data_file"):
        if key in (fingerprint.get("task") or {}):
            settings[f"task.{key}"] = fingerprint["task"][key]
    versions = (manifest or {}).get("versions") or {}
    for key in VERSION_KEYS:
        if key in versions:
            settings[f"versions.{key}"] = versions[key]
    return settings


def read_run(results_dir: Path, run_dir: Path) -> RunResult:
    """Every finished task of one run folder, with its settings and the manifest that ran it."""
    label = run_dir.relative_to(results_dir).as_posix() if run_dir != results_dir else results_dir.resolve().name
    manifests = _manifests(run_dir)
    tasks: dict[str, TaskResult] = {}
    for metrics_path in sorted(run_dir.glob("*/metrics.json")):
        metrics = _read(metrics_path)
        if not isinstance(metrics, dict) or "score" not in metrics:
            continue
        task = str(metrics.get("task") or metrics_path.parent.name)
        manifest = next((m for m in manifests if task in (m.get("tasks") or {})), None)
        fingerprint = _read(metrics_path.parent / "fingerprint.json")
        tasks[task] = TaskResult(
            task=task, metric=str(metrics.get("metric", "?")), scale=str(metrics.get("scale", "")),
            score=metrics.get("score"), n=metrics.get("n"), n_skipped=metrics.get("n_skipped"),
            metrics=dict(metrics.get("metrics") or {}),
            date=_date((manifest or {}).get("updated"), metrics_path), manifest=manifest,
            settings=task_settings(fingerprint if isinstance(fingerprint, dict) else None, manifest))
    # Tasks in the order the runs were asked for them (--task), then any others by name.
    asked = [name for manifest in manifests for name in (manifest.get("arguments") or {}).get("tasks") or []]
    tasks = dict(sorted(tasks.items(), key=lambda item: (asked.index(item[0]) if item[0] in asked else len(asked),
                                                         item[0])))
    current = manifests[0] if manifests and (run_dir / "run.json").is_file() else None
    status = current.get("status") if current else None
    cause = None
    if current and status in ("failed", "stalled") and isinstance(current.get("root_cause"), dict):
        cause = describe_failure(current["root_cause"])
    elif current and status == "preempted":
        cause = f"stopped by {current.get('stopped_by') or 'a signal'}"
    step, series = step_of(label)
    return RunResult(label=label, run_dir=run_dir, step=step, series=series, status=status, cause=cause,
                     tasks=tasks)


def collect(results_dir: Path) -> list[RunResult]:
    """Every run under `results_dir` (folders with a run.json or with task folders holding metrics.json),
    ordered by series, then step, then name."""
    if not results_dir.is_dir():
        raise UserError(f"{results_dir} is not a folder (give the folder that holds the runs' out-dirs)")
    run_dirs = {path.parent.parent for path in results_dir.rglob("metrics.json") if path.parent.parent.is_dir()}
    run_dirs |= {path.parent for path in results_dir.rglob("run.json") if path.parent.name != EARLIER_RUNS}
    run_dirs = {path for path in run_dirs if path == results_dir or results_dir in path.parents}
    runs = [read_run(results_dir, run_dir) for run_dir in run_dirs]
    runs = [run for run in runs if run.tasks or run.status is not None]
    if not runs:
        raise UserError(f"no run under {results_dir}: no <run>/<task>/metrics.json and no run.json")
    from launcher.sweep import natural_key

    return sorted(runs, key=lambda run: (natural_key(run.series), run.step if run.step is not None else -1,
                                         natural_key(run.label)))


def task_names(runs: Sequence[RunResult]) -> list[str]:
    """Every task that any run finished, in the order first seen."""
    names: list[str] = []
    for run in runs:
        names += [task for task in run.tasks if task not in names]
    return names


def headline(runs: Sequence[RunResult], task: str) -> str:
    """'exact_match, percent' for a task: its metric and scale as the runs report them."""
    pairs = Counter((run.tasks[task].metric, run.tasks[task].scale) for run in runs if task in run.tasks)
    metric, scale = pairs.most_common(1)[0][0]
    return f"{metric}, {scale}" if scale else metric


# ------------------------------------------------------------------------------------------- differences

@dataclass(frozen=True)
class Difference:
    """A setting that is not the same in every run that finished `task`."""

    task: str
    key: str
    values: dict[str, Any]            # run label -> value (None: the run does not record it)
    usual: Any                        # the most common value

    def odd_runs(self) -> list[str]:
        return [label for label, value in self.values.items() if value != self.usual]


def settings_differences(runs: Sequence[RunResult]) -> list[Difference]:
    """Per task, every setting whose value is not the same across the runs that finished the task."""
    differences = []
    for task in task_names(runs):
        holders = [run for run in runs if task in run.tasks]
        if len(holders) < 2:
            continue
        keys = sorted({key for run in holders for key in run.tasks[task].settings})
        for key in keys:
            values = {run.label: run.tasks[task].settings.get(key) for run in holders}
            encoded = Counter(json.dumps(value, sort_keys=True) for value in values.values())
            if len(encoded) > 1:
                usual = json.loads(encoded.most_common(1)[0][0])
                differences.append(Difference(task, key, values, usual))
    return differences


def flagged_cells(differences: Sequence[Difference]) -> dict[tuple[str, str], list[Difference]]:
    """(run label, task) -> the differences in which that run is the odd one out."""
    cells: dict[tuple[str, str], list[Difference]] = {}
    for difference in differences:
        for label in difference.odd_runs():
            cells.setdefault((label, difference.task), []).append(difference)
    return cells


# ------------------------------------------------------------------------------------------- the table

def format_score(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def cell_text(result: TaskResult | None, flagged: bool) -> str:
    if result is None:
        return "-"
    text = f"{format_score(result.score)} (n={result.n}"
    if result.n_skipped:
        text += f", {result.n_skipped} skipped"
    return text + ")" + (" *" if flagged else "")


def table_rows(runs: Sequence[RunResult], differences: Sequence[Difference]) -> list[list[str]]:
    """Header, metric line, then one row per run: model, one cell per task, date, status."""
    tasks = task_names(runs)
    flags = flagged_cells(differences)
    rows = [["model", *tasks, "date", "status"], ["", *(headline(runs, task) for task in tasks), "", ""]]
    for run in runs:
        dates = [result.date for result in run.tasks.values()]
        rows.append([run.label, *(cell_text(run.tasks.get(task), (run.label, task) in flags) for task in tasks),
                     max(dates) if dates else "-", run.status or "-"])
    return rows


def format_terminal(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(2, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_markdown(rows: Sequence[Sequence[str]]) -> str:
    def escape(cell: str) -> str:
        return cell.replace("|", "\\|")

    header = [f"{escape(name)}<br>{escape(metric)}" if metric else escape(name) for name, metric in zip(*rows[:2])]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows[2:]]
    return "\n".join(lines)


CSV_COLUMNS = ("model", "step", "task", "metric", "scale", "score", "n", "n_skipped", "date", "status",
               "settings_differ", "run_dir")


def csv_text(runs: Sequence[RunResult], differences: Sequence[Difference]) -> str:
    """One row per (model, task): the long form spreadsheets and pandas want."""
    flags = flagged_cells(differences)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for run in runs:
        for task, result in run.tasks.items():
            odd = "; ".join(f"{d.key}={json.dumps(d.values[run.label])}" for d in flags.get((run.label, task), []))
            writer.writerow([run.label, "" if run.step is None else run.step, task, result.metric, result.scale,
                             "" if result.score is None else result.score, result.n, result.n_skipped, result.date,
                             run.status or "", odd, str(run.run_dir)])
    return buffer.getvalue()


def notes(runs: Sequence[RunResult], differences: Sequence[Difference]) -> list[str]:
    """Lines under the table: flagged settings, runs that did not finish."""
    lines = []
    for difference in differences:
        odd = ", ".join(f"{label} {json.dumps(difference.values[label])}" for label in difference.odd_runs())
        lines.append(f"* {difference.task}: {difference.key} differs: {odd} (others {json.dumps(difference.usual)})")
    for run in runs:
        if run.status not in (None, "done"):
            lines.append(f"{run.label}: last run {run.status}" + (f": {run.cause}" if run.cause else ""))
    return lines


# ------------------------------------------------------------------------------------------- entry point

def output_paths(results_dir: Path, out: Path | None) -> tuple[Path, Path, Path]:
    html = out or results_dir / "report.html"
    return html, html.with_suffix(".csv"), html.with_suffix(".md")


def write_report(results_dir: Path, out: Path | None = None, plots: bool = True, timelines: bool = True,
                 ) -> tuple[list[RunResult], str, tuple[Path, Path, Path]]:
    """Read `results_dir`, write the HTML page, the CSV and the Markdown; return the runs, the terminal
    table and the three paths."""
    from launcher.report_html import render_page

    runs = collect(results_dir)
    differences = settings_differences(runs)
    rows = table_rows(runs, differences)
    html_path, csv_path, markdown_path = output_paths(results_dir, out)
    lines = notes(runs, differences)
    atomic_write_text(csv_path, csv_text(runs, differences))
    atomic_write_text(markdown_path, format_markdown(rows) + "\n" + "".join(f"\n{line}" for line in lines) + "\n")
    page, warnings = render_page(results_dir, runs, differences, plots=plots, timelines=timelines)
    atomic_write_text(html_path, page)
    for warning in warnings:
        print(f"note: {warning}", file=sys.stderr)
    terminal = format_terminal(rows) + "".join(f"\n{line}" for line in lines)
    return runs, terminal, (html_path, csv_path, markdown_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher report", allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results_dir", type=Path, help="folder holding run folders (any depth)")
    parser.add_argument("--out", type=Path, help="the HTML page (default: RESULTS_DIR/report.html); the CSV and "
                                                 "Markdown tables go beside it with .csv and .md")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="leave out the matplotlib plots")
    parser.add_argument("--no-timelines", dest="timelines", action="store_false",
                        help="leave out the per-rank timelines (a page for hundreds of runs stays small)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        _, terminal, paths = write_report(args.results_dir, args.out, args.plots, args.timelines)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(terminal)
    print(f"\nwrote {paths[0]} (page), {paths[1]} (CSV), {paths[2]} (Markdown)")
    return 0
