"""Small helpers every bench script shares: argument defaults, a free port, waiting for the GPU."""
from __future__ import annotations

import socket
from typing import Any, Mapping


def fill_defaults(args: Any, defaults: Mapping[str, Any]) -> None:
    """Set each argument still None to its default (the benches' defaults depend on --device)."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


def free_port() -> int:
    """A TCP port free on this machine now (for a torchrun rendezvous or a store)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sync_device() -> None:
    """Wait for queued GPU work, so that host clocks time it (no-op without CUDA)."""
    import torch   # here, so that bench/timeline.py (drawing only) does not load torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
