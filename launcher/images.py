"""Opening item images safely: every error names the item and the path."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image

from eval_scripts.base import DataError, ImageBytes

# Pillow's own guard warns at 89M pixels and raises at twice that; we raise at the warning level,
# since an evaluation image that large is almost always a corrupt or hostile file.
MAX_IMAGE_PIXELS = 89_478_485


def open_image(source: Any, item_id: str) -> Image.Image:
    """Decode `source` (a path or `ImageBytes`) into an RGB image, or raise DataError naming the item."""
    label = source.label if isinstance(source, ImageBytes) else str(source)
    try:
        if isinstance(source, ImageBytes):
            image = Image.open(io.BytesIO(source.data))
        else:
            image = Image.open(Path(source))
        width, height = image.size
        if width == 0 or height == 0:
            raise DataError(f"item {item_id!r}: image {label} has zero size ({width}x{height})")
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(
                f"item {item_id!r}: image {label} is {width}x{height} pixels, over the "
                f"{MAX_IMAGE_PIXELS} pixel limit (decompression-bomb guard)")
        return image.convert("RGB")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"item {item_id!r}: image not found: {label}") from None
    except (OSError, Image.DecompressionBombError, ValueError, SyntaxError) as error:
        raise DataError(f"item {item_id!r}: cannot read image {label}: {error}") from None


def image_size(source: Any) -> tuple[int, int] | None:
    """(width, height) from the image header without decoding pixels; None if it cannot be read."""
    try:
        if isinstance(source, ImageBytes):
            with Image.open(io.BytesIO(source.data)) as image:
                return image.size
        with Image.open(Path(source)) as image:
            return image.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
