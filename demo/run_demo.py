"""`make demo`: evaluate the bundled tiny InternVL on the synthetic benchmark with several CPU processes.

1. draws the held-out synthetic benchmark (deterministic from its seed) under demo/data/;
2. runs `torchrun --nproc_per_node N launch.py --checkpoint demo/checkpoint --task synthetic_shapes ...`;
3. prints the score, overall and per question type, and where the files are.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKPOINT = ROOT / "demo" / "checkpoint"
DATA_ROOT = ROOT / "demo" / "data"
OUT_DIR = ROOT / "demo" / "out"
TASK = "synthetic_shapes"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, default=2, help="processes (ranks) on this machine")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fresh", action="store_true", help="delete earlier demo results first")
    args = parser.parse_args(argv)

    from eval_scripts.synthetic import generate_benchmark

    data_file = generate_benchmark(DATA_ROOT / "synthetic", n_items=300, seed=1234, split="test")
    print(f"demo data: {data_file}", flush=True)
    if args.fresh and OUT_DIR.exists():
        import shutil

        shutil.rmtree(OUT_DIR)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.nproc),
               "--master_port", str(_free_port()), str(ROOT / "launch.py"),
               "--checkpoint", str(CHECKPOINT), "--task", TASK, "--data-root", str(DATA_ROOT),
               "--out-dir", str(OUT_DIR), "--batch-size", str(args.batch_size), "--num-workers", "1",
               # A demo left by another version or other settings is replaced, not an error; the same one resumes.
               "--overwrite"]
    print("running: " + " ".join(command), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    completed = subprocess.run(command, cwd=ROOT, env=env)
    if completed.returncode != 0:
        print(f"demo run failed (exit {completed.returncode}); see {OUT_DIR / 'run.json'}", file=sys.stderr)
        return completed.returncode
    metrics = json.loads((OUT_DIR / TASK / "metrics.json").read_text())
    print()
    print(f"{TASK}: {metrics['metric']} = {metrics['score']:.1f} % on {metrics['n']} held-out items "
          f"({args.nproc} processes)")
    for name, value in metrics["metrics"].items():
        if name != metrics["metric"]:
            print(f"  {name:<24} {value:.1f}" if isinstance(value, float) else f"  {name:<24} {value}")
    print(f"predictions: {OUT_DIR / TASK / 'predictions.jsonl'}")
    print(f"metrics:     {OUT_DIR / TASK / 'metrics.json'}")
    print(f"manifest:    {OUT_DIR / 'run.json'}")
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
