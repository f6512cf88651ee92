"""InternVL's dynamic-resolution tiling (``--dynamic --max-num M``) with Pillow and torch only.

InternVL (``internvl/train/dataset.py``: ``dynamic_preprocess``, ``find_closest_aspect_ratio``,
``build_transform``) turns one image into tiles of ``image_size`` pixels:

1. Candidate grids are every (cols, rows) with ``min_num <= cols * rows <= max_num``.
2. The grid whose aspect ratio ``cols / rows`` is closest to ``width / height`` wins. On an exact tie,
   candidates are visited in order of increasing tile count and a later one replaces the current choice
   when the image area exceeds half the area the grid covers (``width * height > 0.5 * image_size**2 *
   cols * rows``): large images take more tiles, small ones stay coarse. So 896x896 gets 2x2 but
   448x448 stays 1x1.
3. The image is resized (bicubic) to ``cols * image_size`` by ``rows * image_size`` and cut row by row,
   left to right. When that gives more than one tile and the model uses a thumbnail (every InternVL
   since 1.5), the whole image resized to one tile is appended.
4. Each tile becomes a float32 tensor: values / 255, then ImageNet mean/std (``pixel_values``; the
   adapter ships ``tile_bytes`` and does this step on the model's device). 256 image tokens per
   448-pixel tile ((448 / 14)**2 patches, pixel-shuffled by 0.5 in each direction).
   Without ``--dynamic`` the image is simply resized to one tile.

Order of equal tile counts: InternVL sorts a Python ``set`` by tile count, so grids with the same count
come in set-iteration order; we (like transformers) take them by increasing column count. The two
orders picked the same grid for every case we compared (min_num 1..3, max_num 1..40, 1.6 million image
sizes including exact ratio ties), because two grids of equal count never tie for the best ratio there.

transformers-native InternVL checkpoints (``*-hf``) tile with the GotOcr2 image processor.
``native_processor_kwargs`` maps InternVL's flags onto it; checked against transformers 5.24's
``image_processing_got_ocr2*.py``:

* Same grid rule (``get_optimal_tiled_canvas``: same candidates, same tie-break, ordered by tile count
  then columns), same row-major crop, same thumbnail rule (added when more than one tile), same bicubic
  resampling, so the tile count matches ``tile_image`` for every size.
* Different defaults: the processor class defaults to ``crop_to_patches=False``, ``min_patches=1``,
  ``max_patches=12``, 384-pixel tiles and CLIP mean/std; InternVL's evaluation defaults to no tiling,
  ``max_num`` 6, 448-pixel tiles and ImageNet mean/std. A checkpoint's ``preprocessor_config.json``
  overrides the class defaults (size and mean/std must come from there: this module does not set
  them), and ``InternVLProcessor`` turns ``crop_to_patches`` ON by default, so a plain processor call
  tiles up to ``max_patches`` (12 unless the config says otherwise) + 1 even without ``--dynamic``.
  That is why ``native_processor_kwargs`` always passes ``crop_to_patches`` and, when tiling, both
  patch limits.
* The processor always appends the thumbnail (no ``use_thumbnail`` switch); InternVL 1.0-era models
  without a thumbnail cannot be reproduced through it.
* ``max_patches=1`` disables cropping there (one resized image, as InternVL does with ``max_num`` 1).
"""
from __future__ import annotations

from typing import Sequence

import torch
from PIL import Image

from launcher.pixel_normalization import PixelNormalization

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# InternVL's build_transform: ToTensor (bytes / 255), then Normalize(IMAGENET_MEAN, IMAGENET_STD).
IMAGENET_NORMALIZATION = PixelNormalization(1 / 255, IMAGENET_MEAN, IMAGENET_STD)


def _check_tiling_arguments(min_num: int, max_num: int, image_size: int) -> None:
    if min_num < 1 or max_num < min_num:
        raise ValueError(f"need 1 <= min_num <= max_num, got min_num={min_num}, max_num={max_num} (--max-num)")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")


def candidate_grids(min_num: int = 1, max_num: int = 6) -> list[tuple[int, int]]:
    """Every (cols, rows) with min_num <= cols * rows <= max_num, by tile count, then by columns."""
    grids = [(cols, rows) for cols in range(1, max_num + 1) for rows in range(1, max_num + 1)
             if min_num <= cols * rows <= max_num]
    return sorted(grids, key=lambda grid: (grid[0] * grid[1], grid[0]))


def choose_grid(width: int, height: int, min_num: int = 1, max_num: int = 6,
                image_size: int = 448) -> tuple[int, int]:
    """InternVL's tile grid (cols, rows) for an image of width x height pixels."""
    _check_tiling_arguments(min_num, max_num, image_size)
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    aspect_ratio = width / height
    area = width * height
    best_grid = (1, 1)
    best_difference = float("inf")
    for cols, rows in candidate_grids(min_num, max_num):
        # The same float arithmetic as InternVL, so exact ties are recognised exactly as there.
        difference = abs(aspect_ratio - cols / rows)
        if difference < best_difference:
            best_difference = difference
            best_grid = (cols, rows)
        elif difference == best_difference and area > 0.5 * image_size * image_size * cols * rows:
            best_grid = (cols, rows)
    return best_grid


def tile_image(image: Image.Image, max_num: int = 6, image_size: int = 448, use_thumbnail: bool = True,
               dynamic: bool = True, *, min_num: int = 1) -> list[Image.Image]:
    """Cut `image` into InternVL's tiles of image_size x image_size (plus the thumbnail when several)."""
    _check_tiling_arguments(min_num, max_num, image_size)
    if image.mode != "RGB":
        image = image.convert("RGB")
    tile = (image_size, image_size)
    if not dynamic:
        return [image.resize(tile, Image.Resampling.BICUBIC)]
    cols, rows = choose_grid(image.width, image.height, min_num, max_num, image_size)
    canvas = image.resize((cols * image_size, rows * image_size), Image.Resampling.BICUBIC)
    tiles = [canvas.crop((col * image_size, row * image_size, (col + 1) * image_size, (row + 1) * image_size))
             for row in range(rows) for col in range(cols)]
    if use_thumbnail and len(tiles) > 1:
        tiles.append(image.resize(tile, Image.Resampling.BICUBIC))
    return tiles


def tile_bytes(tiles: Sequence[Image.Image], image_size: int = 448) -> torch.Tensor:
    """Tiles as a uint8 tensor [n, 3, image_size, image_size]: what collate ships to the model's device,
    where `IMAGENET_NORMALIZATION` turns it into `pixel_values` (module `launcher.pixel_normalization`)."""
    if not tiles:
        raise ValueError("no tiles to convert")
    tensors = []
    for tile in tiles:
        if tile.mode != "RGB":
            tile = tile.convert("RGB")
        if tile.size != (image_size, image_size):
            tile = tile.resize((image_size, image_size), Image.Resampling.BICUBIC)
        # bytearray: torch.frombuffer needs a writable buffer; no numpy needed.
        raw = torch.frombuffer(bytearray(tile.tobytes()), dtype=torch.uint8)
        tensors.append(raw.view(image_size, image_size, 3).permute(2, 0, 1))
    return torch.stack(tensors)


def pixel_values(tiles: Sequence[Image.Image], image_size: int = 448) -> torch.Tensor:
    """Tiles as a float32 tensor [n, 3, image_size, image_size], scaled to [0, 1] and ImageNet-normalised."""
    return IMAGENET_NORMALIZATION.apply(tile_bytes(tiles, image_size))


def image_tokens_per_tile(image_size: int = 448, patch_size: int = 14, downsample_ratio: float = 0.5) -> int:
    """Image tokens one tile costs in the LLM: (image_size / patch_size)**2 * downsample_ratio**2."""
    return int((image_size // patch_size) ** 2 * downsample_ratio ** 2)


def native_processor_kwargs(dynamic: bool, max_num: int) -> dict[str, object]:
    """Keyword arguments for transformers' GotOcr2 image processor equivalent to ``--dynamic --max-num``.

    Always sets ``crop_to_patches``: ``InternVLProcessor`` turns it on by default, and InternVL's
    evaluation does not tile unless ``--dynamic`` is given.
    """
    if max_num < 1:
        raise ValueError(f"--max-num must be at least 1, got {max_num}")
    if not dynamic:
        return {"crop_to_patches": False}
    return {"crop_to_patches": True, "min_patches": 1, "max_patches": max_num}
