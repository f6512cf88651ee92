"""InternVL's dynamic tiling: golden grids worked out by hand, tensors, and the native processor."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from launcher.tiling import (IMAGENET_MEAN, IMAGENET_STD, candidate_grids, choose_grid,
                             image_tokens_per_tile, native_processor_kwargs, pixel_values, tile_bytes,
                             tile_image)
from tests.inputs import noise_image

pytestmark = pytest.mark.timeout(120)


# Each case worked out from the rule: closest aspect ratio among grids of <= max_num tiles; on a tie,
# a grid with more tiles wins when width * height > 0.5 * 448**2 * tiles (= 100352 * tiles).
GOLDEN_GRIDS = [
    # (width, height, max_num, (cols, rows), why)
    (448, 448, 6, (1, 1), "square: 1x1 and 2x2 tie; 200704 <= 401408, so 1x1 stays"),
    (896, 448, 6, (2, 1), "exact 2:1"),
    (896, 896, 6, (2, 2), "square tie; 802816 > 401408, so 2x2 replaces 1x1"),
    (600, 600, 6, (1, 1), "square tie; 360000 <= 401408"),
    (800, 800, 6, (2, 2), "square tie; 640000 > 401408"),
    (1344, 1344, 12, (3, 3), "square tie up to 3x3; 1806336 > 903168"),
    (1344, 1344, 6, (2, 2), "3x3 needs 9 > 6 tiles"),
    (4000, 200, 6, (6, 1), "20:1 is closest to 6:1"),
    (200, 4000, 6, (1, 6), "1:20 is closest to 1:6"),
    (448, 1344, 6, (1, 3), "exact 1:3"),
    (1000, 300, 6, (3, 1), "3.33 is closest to 3"),
    (1120, 448, 6, (3, 1), "2.5 ties 2:1 and 3:1; 501760 > 301056, so 3x1"),
    (250, 100, 6, (2, 1), "2.5 ties 2:1 and 3:1; 25000 <= 301056, so 2x1 stays"),
    (1344, 896, 6, (3, 2), "exact 3:2"),
    (5000, 3000, 1, (1, 1), "one tile allowed"),
]


@pytest.mark.parametrize("width, height, max_num, grid, why", GOLDEN_GRIDS)
def test_golden_grid_choice(width: int, height: int, max_num: int, grid: tuple[int, int], why: str) -> None:
    assert choose_grid(width, height, max_num=max_num) == grid, why


def test_candidate_grids_are_ordered_by_tile_count_then_columns() -> None:
    assert candidate_grids(1, 4) == [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (1, 4), (2, 2), (4, 1)]
    assert all(2 <= cols * rows <= 6 for cols, rows in candidate_grids(2, 6))


def test_min_num_excludes_small_grids() -> None:
    assert choose_grid(448, 448, min_num=2, max_num=6) == (2, 2)


@pytest.mark.parametrize("arguments", [dict(min_num=0), dict(max_num=0), dict(min_num=3, max_num=2)])
def test_bad_tile_limits_are_refused(arguments: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        choose_grid(100, 100, **arguments)


def test_square_image_gives_one_tile_and_no_thumbnail() -> None:
    tiles = tile_image(noise_image(448, 448))
    assert [tile.size for tile in tiles] == [(448, 448)]


def test_two_by_one_image_gives_two_tiles_and_a_thumbnail() -> None:
    image = noise_image(896, 448)
    tiles = tile_image(image)
    assert len(tiles) == 3 and all(tile.size == (448, 448) for tile in tiles)
    # The canvas is exactly 2x1 tiles, so the tiles are the image's left and right halves, in order.
    assert tiles[0].tobytes() == image.crop((0, 0, 448, 448)).tobytes()
    assert tiles[1].tobytes() == image.crop((448, 0, 896, 448)).tobytes()
    assert tiles[2].tobytes() == image.resize((448, 448), Image.Resampling.BICUBIC).tobytes()


def test_very_wide_image_with_max_six_gives_six_tiles_and_a_thumbnail() -> None:
    assert len(tile_image(noise_image(2400, 120))) == 7


def test_without_thumbnail_only_the_grid_tiles() -> None:
    assert len(tile_image(noise_image(896, 448), use_thumbnail=False)) == 2


def test_without_dynamic_one_resized_image() -> None:
    tiles = tile_image(noise_image(900, 300), dynamic=False)
    assert [tile.size for tile in tiles] == [(448, 448)]


def test_grey_image_is_converted_to_rgb() -> None:
    tiles = tile_image(Image.new("L", (100, 100), 7))
    assert tiles[0].mode == "RGB"


def test_pixel_values_shape_dtype_and_imagenet_normalisation() -> None:
    tiles = tile_image(Image.new("RGB", (896, 448), (255, 0, 128)))
    values = pixel_values(tiles)
    assert values.shape == (3, 3, 448, 448) and values.dtype == torch.float32
    for channel, byte in enumerate((255, 0, 128)):
        expected = (byte / 255 - IMAGENET_MEAN[channel]) / IMAGENET_STD[channel]
        assert torch.allclose(values[:, channel], torch.tensor(expected), atol=1e-5)


def test_pixel_values_are_tile_bytes_normalised_exactly_as_before() -> None:
    """pixel_values = IMAGENET_NORMALIZATION(tile_bytes): bit for bit the float formula it replaced."""
    tiles = tile_image(noise_image(700, 300, seed=2))
    pixel_bytes = tile_bytes(tiles)
    assert pixel_bytes.dtype == torch.uint8 and pixel_bytes.shape == (3, 3, 448, 448)   # 2x1 + thumbnail
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert torch.equal(pixel_values(tiles), (pixel_bytes.float() / 255.0 - mean) / std)


def test_pixel_values_resizes_tiles_of_another_size() -> None:
    assert pixel_values([noise_image(100, 50)], image_size=56).shape == (1, 3, 56, 56)


def test_pixel_values_of_no_tiles_is_an_error() -> None:
    with pytest.raises(ValueError):
        pixel_values([])


def test_image_tokens_per_tile() -> None:
    assert image_tokens_per_tile() == 256
    assert image_tokens_per_tile(image_size=56, patch_size=14) == 4


def test_native_processor_kwargs() -> None:
    assert native_processor_kwargs(True, 6) == {"crop_to_patches": True, "min_patches": 1, "max_patches": 6}
    assert native_processor_kwargs(False, 6) == {"crop_to_patches": False}


# ----------------------------------------------------------------------------- transformers' processor

@pytest.fixture(scope="module")
def native_processor():  # type: ignore[no-untyped-def]
    transformers = pytest.importorskip("transformers")
    processor_class = getattr(transformers, "GotOcr2ImageProcessorPil", None)
    if processor_class is None:
        pytest.skip("this transformers has no GotOcr2ImageProcessorPil (needs transformers 5.x)")
    return processor_class(size={"height": 448, "width": 448}, image_mean=list(IMAGENET_MEAN),
                           image_std=list(IMAGENET_STD))


@pytest.mark.parametrize("width, height", [(448, 448), (896, 448), (896, 896), (1120, 448), (250, 100),
                                           (2400, 120), (300, 1000), (1344, 896)])
def test_native_processor_makes_the_same_number_of_tiles(native_processor, width: int, height: int) -> None:
    image = Image.new("RGB", (width, height), (10, 20, 30))
    output = native_processor(images=[image], **native_processor_kwargs(True, 6))
    assert list(output["num_patches"]) == [len(tile_image(image, max_num=6))]
    assert native_processor.get_number_of_image_patches(height, width, native_processor_kwargs(True, 6)) == \
        len(tile_image(image, max_num=6))


@pytest.mark.parametrize("dynamic", [True, False])
def test_native_processor_gives_the_same_pixels(native_processor, dynamic: bool) -> None:
    image = noise_image(700, 300, seed=1)
    native = native_processor(images=[image], return_tensors="pt", **native_processor_kwargs(dynamic, 6))
    ours = pixel_values(tile_image(image, max_num=6, dynamic=dynamic))
    assert native["pixel_values"].shape == ours.shape
    assert torch.allclose(native["pixel_values"], ours, atol=1e-5)
