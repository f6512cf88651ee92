"""A sweep of a real (tiny) training run and its report: how docs/report_screenshot.png was made.

    .venv/bin/python -m demo.sweep_demo                 # a few minutes on 2 free CPU cores
    .venv/bin/python -m demo.sweep_demo --skip-training # reuse demo/out/run/checkpoint-*

1. trains the demo model for --steps steps (warm-up a tenth of them), saving demo/out/run/checkpoint-<step>
   every --save-every (`demo.train_demo_model --save-every`), unless those folders exist;
2. sweeps them, the committed demo/checkpoint (5,000 steps) and a random tiny InternVL over the held-out
   synthetic shapes set: `python -m launcher sweep --checkpoints demo/out/run/checkpoint-* ...`, two runs at
   a time, into demo/out/sweep/;
3. adds a single run of demo/checkpoint in bfloat16 beside them (the report flags its other dtype);
4. writes the report (`python -m launcher report demo/out/sweep`) and, when Chromium is installed, a
   screenshot of it (--screenshot).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo" / "out"


def run(command: list[str]) -> None:
    print("+ " + " ".join(command), flush=True)
    subprocess.run(command, cwd=ROOT, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--save-every", type=int, default=100)
    parser.add_argument("--items", type=int, default=300, help="held-out synthetic items")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the training (1 is faster on a "
                                                                 "busy machine)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "report_screenshot.png")
    args = parser.parse_args(argv)

    from eval_scripts.synthetic import generate_benchmark
    from launcher.tiny_models import build_native_internvl

    python = sys.executable
    training_run = OUT / "run"
    if not args.skip_training and not (training_run / f"checkpoint-{args.steps}").is_dir():
        run([python, "-m", "demo.train_demo_model", "--out", str(OUT / "trained-final"), "--steps", str(args.steps),
             "--warmup", str(max(args.steps // 10, 1)), "--save-every", str(args.save_every), "--save-dir",
             str(training_run), "--threads", str(args.threads)])
    data_root = OUT / "sweep-data"
    generate_benchmark(data_root / "synthetic", n_items=args.items, seed=1234, split="test")
    models = OUT / "models"
    if not (models / "tiny-random" / "config.json").is_file():
        build_native_internvl(models / "tiny-random", seed=0)
    results = OUT / "sweep"
    common = ["--task", "synthetic_shapes", "--data-root", str(data_root), "--batch-size", "16",
              "--num-workers", "1"]
    run([python, "-m", "launcher", "sweep", "--checkpoints", str(training_run / "checkpoint-*"),
         str(ROOT / "demo" / "checkpoint"), str(models / "tiny-random"), "--out-dir", str(results),
         "--parallel-runs", "2", *common])
    run([python, str(ROOT / "launch.py"), "--checkpoint", str(ROOT / "demo" / "checkpoint"), "--dtype", "bfloat16",
         "--out-dir", str(results / "single-runs" / "checkpoint-bf16"), *common])
    run([python, "-m", "launcher", "report", str(results)])
    browser = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                    if shutil.which(name)), None)
    if browser is None:
        print("Chromium is not installed: no screenshot (Debian: apt-get install chromium)")
        return 0
    args.screenshot.parent.mkdir(parents=True, exist_ok=True)
    run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,1500",
         f"--user-data-dir={OUT / 'chromium-profile'}", f"--screenshot={args.screenshot}",
         (results / "report.html").resolve().as_uri()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
