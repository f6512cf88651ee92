"""Distributed evaluation launcher for vision-language models.

InternVL-compatible entry points::

    from launcher import load_model_and_tokenizer, split_model

Imported lazily so that `python launch.py --help` and the pure helpers start fast.
"""
from __future__ import annotations

from typing import Any

__all__ = ["load_model_and_tokenizer", "split_model"]


def __getattr__(name: str) -> Any:
    if name == "split_model":
        from launcher.device_map import split_model
        return split_model
    if name == "load_model_and_tokenizer":
        from launcher.loading import load_model_and_tokenizer
        return load_model_and_tokenizer
    raise AttributeError(f"module 'launcher' has no attribute {name!r}")
