"""Per-rank timeline of one task as a PNG, drawn with PIL only: one panel per run.json, one row per rank.

Used by `python -m launcher report` (one picture per run and task) and by `bench/timeline.py` (two runs
side by side, e.g. static | dynamic schedule). It reads `tasks.<task>.per_rank[r].timeline` of run.json
(seconds since rank r's `Evaluation` started: `load_s`, `task_start_s`, `first_batch_s`, `busy_s`,
`idle_s`, `finish_s`, `batches` = [[start, end], ...]) and draws one row per rank: the load (topology,
data, weights), the task's plan and cost estimates (`load_s` .. `task_start_s`; a rank that loaded before
rank 0 waits there for rank 0's plan), every batch as a bar (generate + journal), idle time between batches
(waiting for a prepared batch or the queue), the rank's finish line, and a dashed line at the slowest
rank's finish: the gap behind each row is the time that rank waited for the others. Several panels share
one time scale. Title: task, schedule, ranks, slowest finish and the slowest / fastest ratio of the task's
time (`task_start_s` .. `finish_s`).

A run.json without timelines for the task raises ValueError (the message says what is missing).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from PIL import Image, ImageDraw, ImageFont

# Layout (pixels). The image is `panels * panel_width` wide and `image_height(ranks)` high.
PANEL_WIDTH = 760
TITLE_H = 52
ROW_H = 36
BAR_H = 22
AXIS_H = 34
LEGEND_H = 30
LABEL_W = 140
RIGHT_PAD = 22
MARGIN = 8

COLORS = {
    "background": (255, 255, 255),
    "text": (25, 25, 25),
    "muted": (110, 110, 110),
    "grid": (225, 225, 225),
    "load": (158, 170, 186),
    "plan": (196, 170, 230),
    "busy": (46, 139, 87),
    "busy_edge": (22, 90, 52),
    "idle": (244, 172, 110),
    "waiting": (236, 236, 236),
    "finish": (0, 0, 0),
    "slowest": (200, 30, 30),
}
LEGEND = (("load", "load: setup, data, weights"), ("plan", "plan + costs (the others wait for rank 0)"), ("busy", "batch (generate + journal)"),
          ("idle", "idle in the task"), ("waiting", "done, waiting for the slowest"))


def image_height(ranks: int) -> int:
    return TITLE_H + ranks * ROW_H + AXIS_H + LEGEND_H + 2 * MARGIN


def image_size(panels: int, ranks: int, panel_width: int = PANEL_WIDTH) -> tuple[int, int]:
    """Size of the PNG for `panels` run.json files whose largest world has `ranks` ranks."""
    return panels * panel_width, image_height(ranks)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(draw: ImageDraw.ImageDraw, text: str, font) -> int:
    left, _, right, _ = draw.textbbox((0, 0), text, font=font)
    return right - left


def _nice_step(span: float, most_ticks: int = 8) -> float:
    raw = span / max(most_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for factor in (1, 2, 2.5, 5, 10):
        if factor * magnitude >= raw:
            return factor * magnitude
    return 10 * magnitude


# ------------------------------------------------------------------------------------------------
# Reading run.json


def pick_task(run: dict[str, Any], task: str | None, where: str = "run.json") -> str:
    tasks = list(run.get("tasks", {}))
    if task is None:
        if len(tasks) != 1:
            raise ValueError(f"{where}: holds tasks {tasks}; choose one with --task")
        return tasks[0]
    if task not in tasks:
        raise ValueError(f"{where}: no task {task!r} (it has: {', '.join(tasks) or 'none'})")
    return task


def has_timelines(run: dict[str, Any], task: str) -> bool:
    """Whether run.json holds a per-rank timeline for every rank of `task`."""
    per_rank = run.get("tasks", {}).get(task, {}).get("per_rank") or []
    return bool(per_rank) and all(isinstance(entry.get("timeline"), dict) for entry in per_rank)


def rank_timelines(run: dict[str, Any], task: str) -> list[dict[str, Any]]:
    per_rank = run["tasks"][task].get("per_rank", [])
    timelines = [entry.get("timeline") for entry in per_rank]
    if not timelines or any(timeline is None for timeline in timelines):
        raise ValueError(f"task {task!r}: run.json has no per-rank `timeline` (written by launcher/evaluation.py)")
    return timelines


def summary(run: dict[str, Any], task: str) -> dict[str, Any]:
    """Slowest finish, the task's slowest / fastest time across ranks, busy and idle totals."""
    timelines = rank_timelines(run, task)
    task_seconds = [t["finish_s"] - t.get("task_start_s", t["load_s"]) for t in timelines]
    fastest = min(task_seconds)
    return {"ranks": len(timelines), "slowest_finish_s": round(max(t["finish_s"] for t in timelines), 3),
            "task_seconds": [round(s, 3) for s in task_seconds],
            "slowest_over_fastest": round(max(task_seconds) / fastest, 2) if fastest > 0 else None,
            "busy_s": [t["busy_s"] for t in timelines], "idle_s": [t["idle_s"] for t in timelines],
            "batches": [len(t["batches"]) for t in timelines]}


def _schedule(run: dict[str, Any]) -> str:
    arguments = run.get("arguments", {})
    schedule = arguments.get("schedule", "?")
    world = run.get("topology", {}).get("world_size")
    if schedule == "dynamic" and world == 1:
        return "dynamic (1 process: static)"
    return schedule


# ------------------------------------------------------------------------------------------------
# Drawing


def draw_panel(draw: ImageDraw.ImageDraw, origin_x: int, width: int, run: dict[str, Any], task: str,
               t_max: float, label: str | None = None, rows: int | None = None) -> None:
    """One run's rows, title and time axis inside [origin_x, origin_x + width); the axis goes below `rows`
    rows (default: this run's ranks), so panels of different world sizes share one axis line."""
    title_font, font, small = _font(16), _font(13), _font(11)
    timelines = rank_timelines(run, task)
    info = summary(run, task)
    x0, x1 = origin_x + LABEL_W, origin_x + width - RIGHT_PAD
    top = MARGIN + TITLE_H

    def x(seconds: float) -> float:
        return x0 + (x1 - x0) * max(0.0, min(seconds, t_max)) / t_max

    title = f"{task} - schedule {_schedule(run)}, {info['ranks']} rank{'s' if info['ranks'] != 1 else ''}"
    if label:
        title = f"{label}: {title}"
    draw.text((origin_x + MARGIN, MARGIN), title, fill=COLORS["text"], font=title_font)
    ratio = info["slowest_over_fastest"]
    line2 = (f"last rank done at {info['slowest_finish_s']:.2f} s; task time slowest/fastest rank "
             f"{ratio if ratio is not None else '-'}; batches per rank {info['batches']}")
    draw.text((origin_x + MARGIN, MARGIN + 24), line2, fill=COLORS["muted"], font=small)

    # Grid and axis.
    step = _nice_step(t_max)
    axis_y = top + max(rows or 0, len(timelines)) * ROW_H + 4
    tick = 0.0
    while tick <= t_max + 1e-9:
        tx = x(tick)
        draw.line([(tx, top), (tx, axis_y)], fill=COLORS["grid"], width=1)
        draw.line([(tx, axis_y), (tx, axis_y + 4)], fill=COLORS["muted"], width=1)
        text = f"{tick:g}"
        draw.text((tx - _text_width(draw, text, small) / 2, axis_y + 6), text, fill=COLORS["muted"], font=small)
        tick += step
    draw.line([(x0, axis_y), (x1, axis_y)], fill=COLORS["muted"], width=1)
    draw.text((x1 - _text_width(draw, "seconds", small), axis_y + 19), "seconds", fill=COLORS["muted"], font=small)

    slowest = max(t["finish_s"] for t in timelines)
    for rank, timeline in enumerate(timelines):
        row_top = top + rank * ROW_H
        y0 = row_top + (ROW_H - BAR_H) // 2
        y1 = y0 + BAR_H
        load, start, finish = timeline["load_s"], timeline.get("task_start_s", timeline["load_s"]), timeline["finish_s"]
        draw.text((origin_x + MARGIN, row_top + 3), f"rank {rank}", fill=COLORS["text"], font=font)
        draw.text((origin_x + MARGIN, row_top + 19), f"busy {timeline['busy_s']:.2f} s, idle {timeline['idle_s']:.2f} s",
                  fill=COLORS["muted"], font=small)
        draw.rectangle([x(0), y0, x(load), y1], fill=COLORS["load"])
        if start > load:
            draw.rectangle([x(load), y0, x(start), y1], fill=COLORS["plan"])
        if finish > start:
            draw.rectangle([x(start), y0, x(finish), y1], fill=COLORS["idle"])
        for batch_start, batch_end in timeline["batches"]:
            left, right = x(batch_start), max(x(batch_end), x(batch_start) + 1)
            draw.rectangle([left, y0, right, y1], fill=COLORS["busy"])
            if right - left >= 4:
                draw.line([(left, y0), (left, y1)], fill=COLORS["busy_edge"], width=1)
        if slowest > finish:
            draw.rectangle([x(finish), y0 + 4, x(slowest), y1 - 4], fill=COLORS["waiting"])
        draw.line([(x(finish), y0 - 3), (x(finish), y1 + 3)], fill=COLORS["finish"], width=2)
    # The slowest rank's finish, across every row (dashed).
    sx = x(slowest)
    dash_y = top
    while dash_y < axis_y:
        draw.line([(sx, dash_y), (sx, min(dash_y + 5, axis_y))], fill=COLORS["slowest"], width=1)
        dash_y += 9


def draw_legend(draw: ImageDraw.ImageDraw, width: int, y: int) -> None:
    font = _font(12)
    x = MARGIN + 4
    box = 14
    for key, text in LEGEND:
        draw.rectangle([x, y + 3, x + box, y + 3 + box], fill=COLORS[key], outline=COLORS["muted"])
        x += box + 5
        draw.text((x, y + 3), text, fill=COLORS["text"], font=font)
        x += _text_width(draw, text, font) + 16
    draw.line([(x, y + 1), (x, y + 3 + box + 2)], fill=COLORS["finish"], width=2)
    x += 6
    draw.text((x, y + 3), "rank finished", fill=COLORS["text"], font=font)
    x += _text_width(draw, "rank finished", font) + 16
    for dash in range(y + 1, y + 3 + box + 2, 6):
        draw.line([(x, dash), (x, dash + 3)], fill=COLORS["slowest"], width=1)
    x += 6
    if x < width:
        draw.text((x, y + 3), "last rank finished", fill=COLORS["text"], font=font)


def render(runs: Sequence[dict[str, Any]], task: str, out: str | Path | IO[bytes], labels: Sequence[str | None] | None = None,
           panel_width: int = PANEL_WIDTH) -> tuple[int, int]:
    """Draw one panel per run (same time scale), save a PNG to `out` (a path or a binary file), return its size."""
    labels = list(labels) if labels is not None else [None] * len(runs)
    timelines = [rank_timelines(run, task) for run in runs]
    ranks = max(len(t) for t in timelines)
    t_max = max(t["finish_s"] for timeline in timelines for t in timeline) * 1.03 or 1.0
    size = image_size(len(runs), ranks, panel_width)
    image = Image.new("RGB", size, COLORS["background"])
    draw = ImageDraw.Draw(image)
    for index, run in enumerate(runs):
        draw_panel(draw, index * panel_width, panel_width, run, task, t_max, labels[index], ranks)
        if index:
            draw.line([(index * panel_width, MARGIN), (index * panel_width, size[1] - LEGEND_H - MARGIN)],
                      fill=COLORS["grid"], width=2)
    draw_legend(draw, size[0], size[1] - LEGEND_H - MARGIN + 4)
    # A palette PNG: the picture has a few flat colours plus anti-aliased text, well under 100 kB.
    image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(out, format="PNG", optimize=True)
    return size
