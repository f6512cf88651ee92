"""How long the image check before loading takes (launcher/preflight.py): prints a table and writes JSON.

    python -m bench.preflight [--files 100000] [--threads 1,8,32,64] [--missing 25] [--dir DIR]
                              [--repeats 3] [--out bench/out/preflight.json]

Creates `--files` small image files (a few bytes each: the check stats them, never reads them) in a fresh
folder under `--dir` (default: a temporary folder; point it at a network file system to measure one),
deletes `--missing` of them, and times `find_bad_images` over one item per file with each thread count,
`--repeats` times. The first pass over a local folder meets a warm page cache (the files were just
written); on a network file system, attribute caching decides. Every pass must find exactly the deleted
files, or the script fails.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

from bench.report import write_report
from eval_scripts.base import Item
from launcher.preflight import find_bad_images


def build_files(folder: Path, count: int, missing: int) -> tuple[list[Item], set[int]]:
    """`count` files in 100 subfolders (as image sets are laid out), `missing` of them deleted again."""
    items = []
    for index in range(count):
        subfolder = folder / f"{index % 100:02d}"
        if index < 100:
            subfolder.mkdir(parents=True, exist_ok=True)
        path = subfolder / f"{index:07d}.jpg"
        path.write_bytes(b"\xff\xd8\xff")
        items.append(Item(id=str(index), question="?", images=(path,)))
    step = max(1, count // max(missing, 1))
    gone = set(range(0, count, step)) if missing else set()
    gone = set(sorted(gone)[:missing])
    for index in gone:
        os.unlink(items[index].images[0])
    return items, gone


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.preflight", description=__doc__.splitlines()[0],
                                     allow_abbrev=False)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--threads", default="1,8,32,64", help="comma list of thread counts")
    parser.add_argument("--missing", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to create the files (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=Path("bench/out/preflight.json"))
    args = parser.parse_args(argv)
    threads = [int(value) for value in args.threads.split(",")]

    folder = Path(tempfile.mkdtemp(prefix="preflight-bench-", dir=args.dir))
    try:
        started = time.perf_counter()
        items, gone = build_files(folder, args.files, args.missing)
        created_s = time.perf_counter() - started
        rows = []
        for count in threads:
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                found = find_bad_images(items, threads=count)
                seconds.append(time.perf_counter() - started)
                if {bad.index for bad in found} != gone:
                    raise SystemExit(f"threads={count}: found {len(found)} bad files, expected {len(gone)}")
            rows.append({"threads": count, "files": len(items), "missing_found": len(gone),
                         "median_s": round(statistics.median(seconds), 4), "min_s": round(min(seconds), 4),
                         "files_per_s": round(len(items) / statistics.median(seconds))})
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    print(f"{args.files} files under {folder.parent} (created in {created_s:.1f} s), {args.missing} deleted; "
          f"median of {args.repeats}")
    print(f"{'threads':>8} {'median s':>9} {'min s':>8} {'files/s':>10}")
    for row in rows:
        print(f"{row['threads']:>8} {row['median_s']:>9.3f} {row['min_s']:>8.3f} {row['files_per_s']:>10}")
    report = {"kind": "preflight", "machine": platform.node(), "cpus": os.cpu_count(), "platform": platform.platform(),
              "folder": str(folder.parent), "files": args.files, "missing": args.missing, "repeats": args.repeats,
              "rows": rows}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
