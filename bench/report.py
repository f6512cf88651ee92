"""How every bench reports: a plain-text table on stdout and the whole report as JSON."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Sequence


def print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c, ""))) for r in rows)]) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))
    sys.stdout.flush()


def write_report(path: str | Path | None, report: dict[str, Any]) -> None:
    """Write `report` as indented JSON to `path` (nothing when path is None)."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=2, default=str) + "\n")

