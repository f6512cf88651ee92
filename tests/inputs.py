"""Inputs the adapter and loading tests build: loader arguments and deterministic noise images."""
from __future__ import annotations

import types

import torch
from PIL import Image


def make_args(checkpoint, **overrides) -> types.SimpleNamespace:
    """InternVL's namespace: the four attributes it always has, plus ours as given."""
    values = {"checkpoint": str(checkpoint), "auto": False, "load_in_8bit": False, "load_in_4bit": False}
    return types.SimpleNamespace(**{**values, **overrides})


def noise_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of uniform random bytes, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
    return Image.frombytes("RGB", (width, height), data.numpy().tobytes())
