"""`python -m launcher score ...` rescores predictions; `python -m launcher ...` is launch.py."""
import sys

if len(sys.argv) > 1 and sys.argv[1] == "score":
    from launcher.rescore import main as score_main

    sys.exit(score_main(sys.argv[2:]))

from launcher.cli import main

sys.exit(main())
