"""Rescore without a model: `python -m launcher score --task T --predictions FILE [--metric M] [--out FILE]`.

Recomputes a task's metrics from predictions.jsonl alone (the rows keep every field the metric needs), so a
metric fix never needs GPUs again. Writes metrics.json beside the predictions unless --out says otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from eval_scripts.base import DataError
from eval_scripts.registry import get_task
from launcher.errors import UserError
from launcher.outputs import atomic_write_json, atomic_write_text


def read_predictions(path: Path) -> list[dict]:
    if not path.is_file():
        raise UserError(f"predictions file not found: {path}")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number}: not JSON ({error.msg})") from None
    return rows


def rescore(task_name: str, predictions: Path, metric: str | None = None) -> dict:
    """Metrics of `predictions` (and the task's extra files, written beside it) without a model."""
    task = get_task(task_name)
    if metric is not None:
        task.metric = metric
    rows = read_predictions(predictions)
    for filename, text in task.extra_outputs(rows).items():
        atomic_write_text(predictions.with_name(filename), text)
    return task.score(rows).to_json(task.name)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m launcher score", allow_abbrev=False,
                                     description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True)
    parser.add_argument("--predictions", type=Path, required=True)
    parser.add_argument("--metric", help="metric of the generic vqa task")
    parser.add_argument("--out", type=Path, help="default: metrics.json beside the predictions")
    args = parser.parse_args(argv)
    try:
        metrics = rescore(args.task, args.predictions, args.metric)
    except (UserError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    atomic_write_json(args.out or args.predictions.with_name("metrics.json"), metrics)
    print(json.dumps(metrics, indent=2))
    return 0
