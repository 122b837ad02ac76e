"""Plain classification batches over all training classes (for pre-trained baselines)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fewshot.data.classes import ClassImages
from fewshot.data.resumable import EpochSampler, rank_and_world


@dataclass
class LabelledImages:
    """A batch of images ``[B, C, H, W]`` with global class labels ``[B]``."""

    images: Tensor
    labels: Tensor

    def to(self, device: torch.device | str) -> LabelledImages:
        """Return a copy on ``device``."""
        return LabelledImages(self.images.to(device, non_blocking=True), self.labels.to(device, non_blocking=True))

    def with_images(self, images: Tensor) -> LabelledImages:
        """Return a copy with the images replaced (e.g. normalised floats)."""
        return replace(self, images=images)


class FlatImages(Dataset):
    """Every image of a split with its class index (classes in sorted-name order)."""

    def __init__(self, classes: ClassImages) -> None:
        self.images = torch.cat(list(classes.images))
        self.labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(classes.counts)])

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.images[index], self.labels[index]


def collate_labelled(items: list[tuple[Tensor, Tensor]]) -> LabelledImages:
    """Stack ``(image, label)`` pairs into a LabelledImages batch."""
    return LabelledImages(torch.stack([i for i, _ in items]), torch.stack([label for _, label in items]))


class ShuffledIndexSampler(EpochSampler):
    """A fresh permutation of ``0..n-1`` every epoch, a pure function of ``(seed, epoch)``,
    split across distributed ranks like the episode sampler."""

    def __init__(self, n: int, seed: int) -> None:
        super().__init__()
        self.n = int(n)
        self.seed = int(seed)

    def epoch_indices(self) -> list[int]:
        """This rank's share of the epoch's permutation."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        rank, world = rank_and_world()
        return order[rank::world].tolist()

    def __len__(self) -> int:
        rank, world = rank_and_world()
        return len(range(rank, self.n, world))
