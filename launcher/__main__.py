"""`python -m launcher SUBCOMMAND ...` runs a subcommand; `python -m launcher ...` otherwise is launch.py.

Subcommands (each module has a `main(argv) -> exit code`):
  score    rescore predictions without a model (launcher/rescore.py)
  sweep    many checkpoints x tasks as one resumable job, here or as a Slurm job array (launcher/sweep.py)
  report   one table and one HTML page for every run under a folder (launcher/report.py)
  convert  write an original InternVL folder once as a native checkpoint (launcher/convert_command.py)
"""
import importlib
import sys

SUBCOMMANDS = {
    "score": "launcher.rescore",
    "sweep": "launcher.sweep",
    "report": "launcher.report",
    "convert": "launcher.convert_command",
}

if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
    sys.exit(importlib.import_module(SUBCOMMANDS[sys.argv[1]]).main(sys.argv[2:]))

from launcher.cli import main  # noqa: E402

sys.exit(main())
