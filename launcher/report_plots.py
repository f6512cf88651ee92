"""The report's plots as PNG bytes, drawn with matplotlib (an optional extra: `pip install '.[report]'`).

- `step_plot`: score against training step, one small panel per task (each on its own scale: an MME total
  and a percentage do not share an axis), one line per series of runs (`checkpoint-*`);
- `bar_plot`: one panel per task, one bar per run, for runs whose names carry no step.

`missing()` says why plots cannot be drawn (None when they can); nothing here is imported without it.
"""
from __future__ import annotations

import io
from typing import Sequence

from launcher.report import RunResult, headline, task_names

PANEL_INCHES = (4.3, 3.0)
MOST_COLUMNS = 3
DPI = 100


def missing() -> str | None:
    """None when matplotlib can draw here; else a one-line reason with the command that fixes it."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots left out: matplotlib is not installed (pip install 'vlm-eval-launcher[report]', or pip install matplotlib)"
    return None


def _figure(panels: int):
    import matplotlib

    matplotlib.use("Agg")  # no display: draw to memory
    import matplotlib.pyplot as plt

    columns = min(panels, MOST_COLUMNS)
    rows = -(-panels // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(PANEL_INCHES[0] * columns, PANEL_INCHES[1] * rows),
                                squeeze=False)
    for extra in axes.flat[panels:]:
        extra.set_visible(False)
    return plt, figure, list(axes.flat)


def _png(plt, figure) -> bytes:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    plt.close(figure)
    return buffer.getvalue()


def step_plot(runs: Sequence[RunResult]) -> bytes | None:
    """Score against step, per task, for the runs that have a step; None when none has one."""
    stepped = [run for run in runs if run.step is not None and run.tasks]
    if not stepped:
        return None
    tasks = task_names(stepped)
    plt, figure, axes = _figure(len(tasks))
    series = list(dict.fromkeys(run.series for run in stepped))
    for axis, task in zip(axes, tasks):
        for name in series:
            points = sorted((run.step, run.tasks[task].score) for run in stepped
                            if run.series == name and task in run.tasks and run.tasks[task].score is not None)
            if points:
                axis.plot([step for step, _ in points], [score for _, score in points], marker="o", label=name)
        axis.set_title(task, fontsize=10)
        axis.set_xlabel("training step", fontsize=9)
        axis.set_ylabel(headline(stepped, task), fontsize=9)
        axis.grid(True, alpha=0.3)
        axis.tick_params(labelsize=8)
        if len(series) > 1:
            axis.legend(fontsize=7)
    return _png(plt, figure)


def bar_plot(runs: Sequence[RunResult]) -> bytes | None:
    """One bar per run, per task, for the runs without a step; None when there are none."""
    plain = [run for run in runs if run.step is None and run.tasks]
    if not plain:
        return None
    tasks = task_names(plain)
    plt, figure, axes = _figure(len(tasks))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for axis, task in zip(axes, tasks):
        holders = [run for run in plain if task in run.tasks and run.tasks[task].score is not None]
        positions = range(len(holders))
        scores = [run.tasks[task].score for run in holders]
        bars = axis.bar(positions, scores, color=[colors[i % len(colors)] for i in positions])
        if scores and min(scores) >= 0:   # bars start at zero; an all-zero panel still gets a scale
            axis.set_ylim(0, max(scores) * 1.12 or 1)
        axis.bar_label(bars, labels=[f"{score:.1f}" for score in scores], fontsize=7)
        axis.set_xticks(list(positions), [run.label for run in holders], rotation=25, ha="right", fontsize=8)
        axis.set_title(task, fontsize=10)
        axis.set_ylabel(headline(plain, task), fontsize=9)
        axis.grid(True, axis="y", alpha=0.3)
        axis.tick_params(axis="y", labelsize=8)
    return _png(plt, figure)
