"""In-memory image cache grouped by class: what every episode is sampled from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.data.errors import DataError

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class ClassImages:
    """The decoded images of one split, one uint8 tensor ``[n_images, C, H, W]`` per class.

    Classes are kept sorted by name so that episode sampling never depends on file-system
    order or Python's ``hash()``.
    """

    names: tuple[str, ...]
    images: tuple[Tensor, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.images):
            raise ValueError("ClassImages needs one image tensor per class name.")
        if list(self.names) != sorted(self.names):
            raise ValueError("ClassImages names must be sorted; build it with from_mapping().")
        if len(set(self.names)) != len(self.names):
            raise ValueError("ClassImages names must be unique.")
        shapes = {tuple(t.shape[1:]) for t in self.images}
        if len(shapes) > 1:
            raise DataError(
                f"Images of different shapes in one split: {sorted(shapes)}; "
                "resize every image to one size (set the dataset's image_size)."
            )
        for name, t in zip(self.names, self.images):
            if t.dtype != torch.uint8 or t.dim() != 4:
                raise ValueError(f"Class {name!r}: expected uint8 [n, C, H, W], got {t.dtype} {tuple(t.shape)}.")

    @classmethod
    def from_mapping(cls, classes: Mapping[str, Tensor]) -> ClassImages:
        """Build from ``{class name: uint8 [n, C, H, W]}``, sorting by name."""
        names = tuple(sorted(classes))
        return cls(names=names, images=tuple(classes[n] for n in names))

    def __len__(self) -> int:
        return len(self.names)

    @property
    def counts(self) -> list[int]:
        """Number of images of each class, in ``names`` order."""
        return [t.shape[0] for t in self.images]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        if not self.images:
            raise DataError("This split has no classes.")
        return tuple(self.images[0].shape[1:])  # type: ignore[return-value]


def joined(first: ClassImages, second: ClassImages) -> ClassImages:
    """The classes of two class-disjoint splits as one (e.g. training on train + validation)."""
    return ClassImages.from_mapping({**dict(zip(first.names, first.images)), **dict(zip(second.names, second.images))})


def check_splits(splits: Mapping[str, ClassImages], source: str) -> dict[str, ClassImages]:
    """Check that ``splits`` has non-empty, class-disjoint train/val/test splits."""
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise DataError(f"{source}: no {missing} split; every dataset needs train, val and test classes.")
    for split in SPLITS:
        if len(splits[split]) == 0:
            raise DataError(
                f"{source}: the {split} split has no classes; check the split settings "
                "(alphabet lists, split fractions or the split CSV)."
            )
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in splits[split].names:
            if name in seen:
                raise DataError(
                    f"{source}: class {name!r} is in both the {seen[name]} and the {split} split; "
                    "splits must hold disjoint classes."
                )
            seen[name] = split
    shapes = {splits[s].image_shape for s in SPLITS}
    if len(shapes) > 1:
        raise DataError(f"{source}: splits have different image shapes {sorted(shapes)}.")
    return {s: splits[s] for s in SPLITS}
