"""Shared fixtures: tiny offline checkpoints, built once per test session into a temporary folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Two CPU cores are shared by everything running here: one thread per process keeps tests predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def native_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny transformers-native InternVL (`-hf` layout) with tokenizer, image processor, chat template."""
    from launcher.tiny_models import build_native_internvl

    return build_native_internvl(tmp_path_factory.mktemp("native_internvl"), seed=0)


@pytest.fixture(scope="session")
def remote_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny remote-code InternVLChatModel-like checkpoint (loads only with trust_remote_code)."""
    from launcher.tiny_models import build_remote_code_internvl

    return build_remote_code_internvl(tmp_path_factory.mktemp("remote_internvl"), seed=0)
