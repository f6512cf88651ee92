"""Rank 0's merge: every item's row exactly once, in dataset order.

On a shared filesystem rank 0 reads every journal of the task; with `--no-shared-fs` each process sends
its rows of this attempt to rank 0 with `gather_object` (to rank 0 only, not to every rank as InternVL's
`all_gather_object` does).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from eval_scripts.base import Item


class IncompleteResultsError(RuntimeError):
    """Rows are missing or unexpected after every process reported done: a bug, never silently scored."""


def merge_rows(items: Sequence[Item], row_sets: Iterable[Mapping[str, Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """One row per item in dataset order, from row sets keyed by id (earlier sets win on duplicates).

    Raises IncompleteResultsError naming missing ids, or ids that belong to no item.
    """
    merged: dict[str, Mapping[str, Any]] = {}
    for rows in row_sets:
        for item_id, row in rows.items():
            merged.setdefault(str(item_id), row)
    wanted = [item.id for item in items]
    missing = [item_id for item_id in wanted if item_id not in merged]
    unknown = sorted(set(merged) - set(wanted))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"{len(missing)} item(s) have no prediction (first: {', '.join(missing[:5])})")
        if unknown:
            parts.append(f"{len(unknown)} prediction(s) match no item of the data (first: {', '.join(unknown[:5])}); "
                         "was the data file changed between attempts?")
        raise IncompleteResultsError("; ".join(parts))
    return [dict(merged[item_id]) for item_id in wanted]


def gather_rows_to_main(rows: dict[str, dict[str, Any]], rank: int, world_size: int) -> list[dict] | None:
    """`gather_object` of each process's rows to rank 0; returns the list of row sets on rank 0, else None."""
    import torch.distributed as dist

    received: list[Any] | None = [None] * world_size if rank == 0 else None
    dist.gather_object(rows, received, dst=0)
    return received
