"""Test-only (tests/runs.py `child_env(exit_check=True)` puts this folder on PYTHONPATH).

NCCL prints "WARNING: destroy_process_group() was not called before program exit, which can leak
resources" from the process group's destructor when a process exits with the group alive (torch's
ProcessGroupNCCL.cpp); gloo, on the CPU, says nothing. This imitation prints the same words at a Python
exit that leaves the default process group initialised, so the CPU tests see what a GPU run would show.
Like NCCL's, it says nothing after `os._exit` (no destructor runs there either).
"""
import atexit
import sys


def _warn_if_the_process_group_is_alive() -> None:
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        print("WARNING: destroy_process_group() was not called before program exit, which can leak resources "
              "(imitated by tests/exit_check/sitecustomize.py)", file=sys.stderr, flush=True)


atexit.register(_warn_if_the_process_group_is_alive)
