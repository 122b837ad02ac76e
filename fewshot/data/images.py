"""Decoding image files into uint8 tensors, with errors that name the bad file."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fewshot.data.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    """True when a file name has a known image suffix."""
    return name.lower().endswith(IMAGE_SUFFIXES)


# Pillow modes of more than 8 bits per pixel: scaled to 0..255 (``convert`` would clip them)
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# transparent pixels become paper: dark ink drawn on a transparent sheet shows as ink on white
BACKGROUND = (255, 255, 255, 255)


def to_8bit(img: Image.Image) -> Image.Image:
    """An 8-bit ``L`` or ``RGB`` image with every pixel's meaning kept, from any Pillow mode.

    * 16-bit grayscale (``I;16*``) is scaled from 0..65535 to 0..255; 32-bit ``I`` and ``F``
      images are scaled the same way when any value exceeds 255 (16-bit data, as Pillow opens
      some 16-bit PNGs and TIFFs), else taken as 0..255.
    * Transparency (``RGBA``, ``LA``, ``PA``, a palette or grayscale image with a transparent
      colour) is composited onto a white background: what is not drawn is white paper, so
      black-ink-on-transparent drawings keep their strokes.
    * Palette, CMYK, YCbCr, 1-bit and the other modes are converted by Pillow to RGB (or L).
    """
    if img.mode in WIDE_MODES:
        values = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or values.max(initial=0) > 255:
            values = values / 257.0
        return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND), rgba).convert("RGB")
    if img.mode in ("1", "L", "RGB"):  # converted by Pillow exactly as before
        return img
    return img.convert("RGB")


def decode_image(data: bytes, where: str, channels: int, image_size: int | None, invert: bool = False) -> torch.Tensor:
    """Decode encoded image bytes into uint8 ``[channels, H, W]``: brought to 8 bits by :func:`to_8bit`,
    converted to ``channels``, resized to ``image_size`` x ``image_size`` (None keeps the size);
    ``where`` names the file in errors.
    """
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            converted = to_8bit(img).convert("L" if channels == 1 else "RGB")
    except Image.DecompressionBombError as err:  # not an OSError: Pillow's guard against decompression bombs
        raise DataError(
            f"Cannot decode image {where}: it has more pixels than Pillow decodes safely "
            f"({2 * (Image.MAX_IMAGE_PIXELS or 0)}); shrink it (the images are resized to a few dozen pixels anyway)."
        ) from err
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


def normalise(images: torch.Tensor, mean: torch.Tensor | None, std: torch.Tensor | None) -> torch.Tensor:
    """uint8 ``[..., C, H, W]`` -> float in [0, 1], then ``(x - mean) / std`` per channel: how training
    and prediction alike feed images to a model."""
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if mean is not None:
        x = x - mean.to(x.device).view(-1, 1, 1)
    if std is not None:
        x = x / std.to(x.device).view(-1, 1, 1)
    return x


def warn_constant_images(names: Sequence[str], images: Sequence[torch.Tensor], what: str) -> list[str]:
    """Warn, naming the files, about images whose pixels are all equal (they carry nothing); return them."""
    flat = [name for name, image in zip(names, images) if image.numel() and bool((image == image.flatten()[0]).all())]
    if flat:
        shown = ", ".join(flat[:5]) + (f" and {len(flat) - 5} more" if len(flat) > 5 else "")
        warnings.warn(
            f"{len(flat)} {what} decode to a single flat colour, so they carry no information: {shown}. "
            "Check that they are not blank (e.g. white ink on a transparent background, which is "
            "composited onto white) and replace or remove them.",
            stacklevel=2,
        )
    return flat


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
        images = [one(item) for item in items]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            images = list(pool.map(one, items))
    warn_constant_images([where for where, _ in items], images, "images")
    return images
