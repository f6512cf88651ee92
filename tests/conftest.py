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


@pytest.fixture(scope="session")
def faulty_checkpoint(native_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny native InternVL plus remote code that fails on a marker word (tests/faulty_model.py)."""
    from tests.faulty_model import build_faulty_checkpoint

    return build_faulty_checkpoint(native_checkpoint, tmp_path_factory.mktemp("faulty_internvl"))


# ----- a training run to sweep and one sweep of it, stopped and resumed (tests/sweeps.py)

@pytest.fixture(scope="session")
def sweep_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.sweeps import make_sweep_data

    return make_sweep_data(tmp_path_factory.mktemp("sweep_data"))


@pytest.fixture(scope="session")
def sweep_checkpoints(tmp_path_factory: pytest.TempPathFactory, native_checkpoint: Path) -> list[Path]:
    """run/checkpoint-1000, -2000, -3000 (the demo model) and tiny-random (a random tiny InternVL)."""
    from tests.sweeps import make_training_run

    return make_training_run(tmp_path_factory.mktemp("training"), native_checkpoint)


@pytest.fixture(scope="session")
def interrupted_sweep(tmp_path_factory: pytest.TempPathFactory, sweep_checkpoints, sweep_data_root):
    """The sweep of those four checkpoints over two tasks, stopped by SIGTERM mid-way and rerun."""
    from tests.sweeps import run_interrupted_sweep

    return run_interrupted_sweep(tmp_path_factory.mktemp("sweep") / "results", sweep_checkpoints, sweep_data_root)
