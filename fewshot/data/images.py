"""Decoding image files into uint8 tensors, with errors that name the bad file."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fewshot.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    """True when a file name has a known image suffix."""
    return name.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, where: str, channels: int, image_size: int | None, invert: bool = False) -> torch.Tensor:
    """Decode encoded image bytes into uint8 ``[channels, H, W]``.

    RGB images are converted to grayscale where ``channels == 1`` (and vice versa), then
    resized to ``image_size`` x ``image_size`` (None keeps the size). ``where`` names the file
    in error messages.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            converted = img.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"Cannot decode image {where}: {err}. The file is corrupt, truncated or not an image; replace or delete it."
        ) from err
    if image_size is not None and converted.size != (image_size, image_size):
        converted = converted.resize((image_size, image_size), Image.Resampling.LANCZOS)
    array = np.array(converted, dtype=np.uint8)
    if invert:
        array = 255 - array
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def decode_many(
    items: Sequence[tuple[str, Callable[[], bytes]]],
    channels: int,
    image_size: int | None,
    invert: bool = False,
    workers: int = 4,
) -> list[torch.Tensor]:
    """Decode ``(name, read_bytes)`` items in parallel threads, keeping their order."""

    def one(item: tuple[str, Callable[[], bytes]]) -> torch.Tensor:
        where, read = item
        return decode_image(read(), where, channels, image_size, invert)

    if workers <= 1 or len(items) < 64:
        return [one(item) for item in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, items))


def read_file_bytes(path: Path) -> Callable[[], bytes]:
    """A reader for one file, for ``decode_many``."""
    return path.read_bytes


def stack_class(images: Iterable[torch.Tensor]) -> torch.Tensor:
    """Stack one class's decoded images into uint8 ``[n, C, H, W]``."""
    return torch.stack(list(images))
