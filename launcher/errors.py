"""The exceptions that decide a process's exit code (see DESIGN: exit codes)."""
from __future__ import annotations

EXIT_DONE = 0
EXIT_USER_ERROR = 2
EXIT_PEER_FAILED = 3
EXIT_PREEMPTED = 75


class UserError(Exception):
    """A mistake the user can fix (bad flag, bad data, missing file): one message, no traceback, exit 2.

    The message names what was expected, what was found and the flag or command that fixes it.
    """

    exit_code = EXIT_USER_ERROR


class PeerFailedError(Exception):
    """Another rank failed or stalled; this rank stops with its journal intact (exit 3)."""

    exit_code = EXIT_PEER_FAILED


class PreemptedError(Exception):
    """SIGTERM / SIGUSR1 arrived: journals are flushed, safe to requeue (exit 75)."""

    exit_code = EXIT_PREEMPTED
