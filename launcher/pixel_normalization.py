"""Pixel rescale + mean/std normalisation, done on the model's device rather than in DataLoader workers.

Why: in a worker, rescaling and normalising cost about a third of an item's CPU time (4 of 12 ms,
profiled with transformers' GotOcr2ImageProcessorPil), and float32 pixels are four times the bytes of
uint8 to put in shared memory, pin and copy to the GPU (616 MB against 154 MB for 256 one-tile items).
So collate ships uint8 [n, 3, H, W] and `ModelInputs.to` applies a `PixelNormalization` after the copy.

One piece of code serves both adapters and `tiling.pixel_values`, so the CPU and device paths cannot
drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PixelNormalization:
    """``(bytes * scale - mean) / std`` per channel: an image processor's rescale and normalise steps."""

    scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def apply(self, pixel_bytes: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """uint8 pixels [..., channels, H, W] -> normalised values, computed in float32 on the tensor's
        device, then cast to `dtype` (float32 when None).

        The rescale divides by ``1 / scale`` (255) instead of multiplying by ``scale``: for every byte
        value that rounds exactly as transformers' PIL image processors (``value * scale`` in float64,
        then float32) and ``value / 255.0`` in float32 do, so the result equals the CPU path bit for bit.
        The divisor is a tensor on the device, not a Python number: CUDA turns division by a number
        into multiplication by its reciprocal, which rounds differently.
        """
        if pixel_bytes.dtype != torch.uint8:
            raise TypeError(f"PixelNormalization.apply expects uint8 pixels, got {pixel_bytes.dtype}")
        device = pixel_bytes.device
        divisor = torch.tensor(1.0 / self.scale, dtype=torch.float32, device=device)
        shape = (len(self.mean), 1, 1)
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(shape)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(shape)
        values = pixel_bytes.to(torch.float32).div_(divisor).sub_(mean).div_(std)
        return values if dtype is None else values.to(dtype)
