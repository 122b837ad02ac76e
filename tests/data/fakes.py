"""Small fake datasets on disk in the layouts the dataset sources read."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SYNSETS = ("n01532829", "n01558993", "n01704323", "n01749939", "n01770081", "n01843383", "n01910747")
# made-up WordNet-shaped ids for fakes that need more classes than the real ones above
SYNSETS += tuple(f"n0999{i:04d}" for i in range(40))


def random_image(rng: np.random.Generator, size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """A noise image of ``size`` (width, height) in ``mode`` ("RGB" or "L")."""
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


def glyph_png(rng: np.random.Generator, size: int = 105) -> bytes:
    """A binary PNG like Omniglot's: a few black strokes on a white background."""
    pixels = np.full((size, size), 255, dtype=np.uint8)
    for _ in range(3):
        top, left = rng.integers(10, size - 30, 2)
        pixels[top : top + rng.integers(3, 20), left : left + rng.integers(3, 20)] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("1").save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_files(
    alphabets: Mapping[str, int], images: int = 3, top: str = "images_background", seed: int = 0
) -> dict[str, bytes]:
    """``{relative path: PNG bytes}`` of a fake Omniglot with ``{alphabet: n characters}``."""
    rng = np.random.default_rng(seed)
    files = {}
    for alphabet, n_characters in alphabets.items():
        for c in range(1, n_characters + 1):
            for drawer in range(1, images + 1):
                files[f"{top}/{alphabet}/character{c:02d}/{drawer:04d}_{c:02d}.png"] = glyph_png(rng)
    return files


def write_files(root: Path, files: Mapping[str, bytes]) -> Path:
    """Write ``{relative path: bytes}`` under ``root``."""
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def write_zip(path: Path, files: Mapping[str, bytes], dirs: Sequence[str] = ()) -> Path:
    """Write ``{member: bytes}`` (plus empty folder entries ``dirs``) into the zip ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for folder in dirs:
            archive.writestr(folder.rstrip("/") + "/", b"")
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def make_mini_imagenet(
    root: Path,
    classes: Sequence[int] = (3, 2, 2),
    images: int = 4,
    sizes: Sequence[tuple[int, int]] = ((84, 84), (100, 70), (60, 90), (120, 120)),
    seed: int = 0,
) -> Path:
    """A fake Ravi & Larochelle Mini-ImageNet: ``images/*.jpg`` plus train/val/test CSVs.

    ``classes`` gives the synsets per split; image ``i`` of a class has size ``sizes[i % len]``.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    synsets = iter(SYNSETS)
    for split, n_classes in zip(("train", "val", "test"), classes, strict=True):
        lines = ["filename,label"]
        for _ in range(n_classes):
            synset = next(synsets)
            for i in range(images):
                filename = f"{synset}{i + 1:08d}.jpg"
                random_image(rng, sizes[i % len(sizes)]).save(root / "images" / filename, quality=90)
                lines.append(f"{filename},{synset}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return root


def make_image_folder(
    root: Path,
    classes: Sequence[str],
    images: int = 3,
    mode: str = "RGB",
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
) -> Path:
    """Class folders ``root/<class>/img<i>.png`` (``classes`` may hold nested names like ``a/b``)."""
    rng = np.random.default_rng(seed)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(images):
            random_image(rng, size, mode).save(folder / f"img{i}.png")
    return root
