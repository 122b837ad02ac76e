"""A user's own images, one folder per class, and helpers shared by the dataset sources."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from fewshot.data.classes import SPLITS, ClassImages, check_splits
from fewshot.data.errors import DataError
from fewshot.data.images import decode_many, is_image_name

# Files that operating systems and archivers drop next to images; never data.
IGNORED_NAMES = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", "__MACOSX"})
DECODE_CHUNK = 4096

Reader = tuple[str, Callable[[], bytes]]


def is_ignored_name(name: str) -> bool:
    """True for file-system junk (``.DS_Store``, ``Thumbs.db``, hidden files) to skip silently."""
    return name in IGNORED_NAMES or name.startswith(".")


def default_workers(workers: int | None) -> int:
    """The number of decoding threads: ``workers``, or ``min(8, cpu count)`` when None."""
    if workers is None:
        return min(8, os.cpu_count() or 1)
    if workers < 1:
        raise DataError(f"workers must be a positive number of decoding threads, got {workers}.")
    return int(workers)


def split_by_fractions(names: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Split ``names`` into train/val/test by ``fractions`` after a permutation seeded by ``seed``.

    The permutation is of the sorted names, so the split depends only on the set of names,
    the fractions and the seed; each split's names come back sorted.
    """
    values = [float(f) for f in fractions]
    if len(values) != 3 or min(values) < 0 or abs(sum(values) - 1.0) > 1e-6:
        raise DataError(
            f"split_fractions must be three non-negative numbers [train, val, test] summing to 1, "
            f"got {list(fractions)}; e.g. [0.7, 0.1, 0.2]."
        )
    ordered = sorted(names)
    order = np.random.default_rng(int(seed)).permutation(len(ordered))
    shuffled = [ordered[i] for i in order]
    bounds = [0, round(values[0] * len(ordered)), round((values[0] + values[1]) * len(ordered)), len(ordered)]
    return {split: sorted(shuffled[bounds[i] : bounds[i + 1]]) for i, split in enumerate(SPLITS)}


def decode_classes(
    readers: Mapping[str, Sequence[Reader]],
    channels: int,
    image_size: int | None,
    invert: bool,
    workers: int,
) -> dict[str, torch.Tensor]:
    """Decode ``{class: [(where, read_bytes), ...]}`` into ``{class: uint8 [n, C, H, W]}``.

    Whole classes are decoded in chunks of a few thousand images: enough to keep every
    thread busy without holding a second copy of a large dataset while stacking.
    """
    decoded: dict[str, torch.Tensor] = {}
    for chunk in _class_chunks(readers):
        images = decode_many([item for n in chunk for item in readers[n]], channels, image_size, invert, workers)
        start = 0
        for n in chunk:
            decoded[n] = torch.stack(images[start : start + len(readers[n])])
            start += len(readers[n])
    return decoded


def _class_chunks(readers: Mapping[str, Sequence[Reader]]) -> list[list[str]]:
    chunks: list[list[str]] = [[]]
    size = 0
    for name, items in readers.items():
        if size >= DECODE_CHUNK:
            chunks.append([])
            size = 0
        chunks[-1].append(name)
        size += len(items)
    return [c for c in chunks if c]


def walk_folders(root: Path) -> Iterator[tuple[Path, list[str], list[str]]]:
    """``os.walk`` of ``root`` (sorted, top-down) that follows symlinked folders and files.

    A symlinked folder is walked like a real one; one that points at a folder it lies in (a
    loop) or a link whose target is missing is an error naming it, so no data is dropped
    silently. The caller may prune the folder names it gets, as with ``os.walk``.
    """

    def visit(folder: Path, ancestors: frozenset[str]) -> Iterator[tuple[Path, list[str], list[str]]]:
        dirnames, filenames = [], []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_dir():  # follows symlinks
                dirnames.append(entry.name)
            elif entry.is_file() or is_ignored_name(entry.name):
                filenames.append(entry.name)
            elif entry.is_symlink():
                raise DataError(
                    f"{folder / entry.name} is a symbolic link to {os.readlink(entry.path)}, which does not "
                    "exist; fix or remove the link."
                )
        yield folder, dirnames, filenames
        for name in dirnames:
            path = folder / name
            real = os.path.realpath(path)
            if real in ancestors:
                raise DataError(
                    f"{path} is a symbolic link to {real}, a folder it lies in: following it would loop "
                    "forever. Remove the link or point it at a folder outside."
                )
            yield from visit(path, ancestors | {real})

    yield from visit(root, frozenset({os.path.realpath(root)}))


def find_class_folders(root: Path) -> dict[str, list[Path]]:
    """``{class name: sorted image paths}`` for every folder under ``root`` that holds images.

    A class is named by its path relative to ``root`` (``"birds/owl"`` for nested folders);
    symlinked folders are followed (a loop is an error naming the link).
    """
    classes: dict[str, list[Path]] = {}
    for here, dirnames, filenames in walk_folders(root):
        dirnames[:] = [d for d in dirnames if not is_ignored_name(d)]
        files = sorted(f for f in filenames if not is_ignored_name(f))
        images = [f for f in files if is_image_name(f)]
        others = [f for f in files if not is_image_name(f)]
        if here == root:
            if images:
                raise DataError(
                    f"Image {here / images[0]} lies directly in {root}; move the images into one sub-folder per class."
                )
            continue
        if images and others:
            raise DataError(
                f"{here / others[0]} is not an image (known suffixes: .png, .jpg, ...) but lies in the "
                "class folder among the images; delete or move it."
            )
        if images:
            classes[here.relative_to(root).as_posix()] = [here / f for f in images]
        elif not dirnames:
            what = f"holds only non-image files such as {others[0]}" if others else "is empty"
            raise DataError(f"Class folder {here} {what}; remove it or add its images.")
    if not classes:
        raise DataError(
            f"No class folders with images under {root}; expected {root}/<class>/<image> "
            f"(or {root}/train|val|test/<class>/<image>)."
        )
    return classes


class ImageFolder:
    """Your own images: ``root/<class>/<image>`` or ``root/{train,val,test}/<class>/<image>``.

    In the first layout the sorted class names are split into train/val/test by
    ``split_fractions`` after a permutation seeded by ``split_seed``; the second layout is
    used whenever ``root`` holds ``train``, ``val`` and ``test`` folders. Class folders may be
    nested (the class is then named by its relative path, e.g. ``"birds/owl"``). Hidden files,
    ``.DS_Store`` and ``Thumbs.db`` are ignored; any other non-image file is an error. Images are
    converted to ``channels`` (1 or 3), resized with LANCZOS and, with ``invert``, stored as
    ``255 - pixel`` (dark ink on white paper -> bright strokes).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        channels: int = 3,
        image_size: int = 84,
        invert: bool = False,
        split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
        split_seed: int = 0,
        name: str = "folder",
        workers: int | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
        self.root = Path(root).expanduser()
        self.channels = channels
        self.image_size = image_size
        self.invert = invert
        self.split_fractions = tuple(split_fractions)
        self.split_seed = split_seed
        self.name = name
        self.workers = default_workers(workers)

    def load(self) -> dict[str, ClassImages]:
        """Decode every class folder into memory, one ClassImages per split."""
        files = self._split_files()
        readers = {
            cls: [(str(p), p.read_bytes) for p in paths] for split in SPLITS for cls, paths in files[split].items()
        }
        decoded = decode_classes(readers, self.channels, self.image_size, self.invert, self.workers)
        splits = {s: ClassImages.from_mapping({c: decoded[c] for c in files[s]}) for s in SPLITS}
        return check_splits(splits, self.name)

    def _split_files(self) -> dict[str, dict[str, list[Path]]]:
        root = self.root
        if not root.is_dir():
            raise DataError(
                f"Image folder {root} not found; set data.source.root to a folder holding one "
                "sub-folder of images per class (or train/, val/ and test/ folders of class folders)."
            )
        present = [s for s in SPLITS if (root / s).is_dir()]
        if len(present) == len(SPLITS):
            files = {s: find_class_folders(root / s) for s in SPLITS}
            how = f"the class folders under {root}/<split>"
        elif present:
            missing = [s for s in SPLITS if s not in present]
            raise DataError(
                f"{root} has {present} folders but no {missing}; give it all of train/, val/ and test/ "
                "(each holding class folders), or none and let split_fractions split the classes."
            )
        else:
            every = find_class_folders(root)
            names = split_by_fractions(list(every), self.split_fractions, self.split_seed)
            files = {s: {c: every[c] for c in names[s]} for s in SPLITS}
            how = f"split_fractions={list(self.split_fractions)} over {len(every)} classes"
        for split in SPLITS:
            if len(files[split]) < 2:
                raise DataError(
                    f"{self.name}: {how} gives the {split} split {len(files[split])} class(es); an "
                    "episode needs at least 2 classes. Add class folders or change split_fractions."
                )
        return files
