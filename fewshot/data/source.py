"""The interface every dataset implements: load class-split images into memory."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from fewshot.data.classes import ClassImages


@runtime_checkable
class DatasetSource(Protocol):
    """A dataset that decodes its images once into ``{"train"|"val"|"test": ClassImages}``."""

    name: str

    def load(self) -> dict[str, ClassImages]:
        """Decode the dataset into memory, one ClassImages per split."""
        ...
