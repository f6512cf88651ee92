#!/usr/bin/env python3
"""Evaluate a vision-language model on benchmarks, on 1 to hundreds of GPUs. See `launch.py --help`."""
import sys

from launcher.cli import main

if __name__ == "__main__":
    sys.exit(main())
