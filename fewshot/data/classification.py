"""Plain classification batches over all training classes (for pre-trained baselines)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from fewshot.data.classes import ClassImages
from fewshot.data.errors import DataError
from fewshot.data.resumable import EpochSampler, rank_and_world

# how the image batches of a pre-trained baseline are drawn (``data.image_sampling``)
IMAGE_SAMPLINGS = ("shuffle", "class_balanced")


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


class ClassBalancedIndexSampler(EpochSampler):
    """Image batches drawn as the official Table-1 baselines' pre-training draws them
    (twitter/meta-learning-lstm, ``model/baselines/pre-train.lua``): every iteration takes
    ``per_class`` random images of every class (its ``createEpisode`` over all training classes),
    then ``batch_size`` of those at random (``util.getRandomSubset``).

    Batches are independent draws; an epoch is ``ceil(n_images / batch_size)`` of them, as many
    as a shuffled epoch has, so epoch-based budgets keep their length. Batch ``b`` of epoch ``e``
    is a pure function of ``(seed, e, b)``, and the epoch's indices are its batches one after the
    other, so the ResumableLoader's position (indices trained on) resumes at a batch boundary.
    Rank ``r`` of ``w`` takes the batches ``r, r + w, ...`` (whole batches; an epoch's last
    ``n_batches % w`` are left out so that every rank takes as many steps).
    """

    def __init__(self, counts: Sequence[int], per_class: int, batch_size: int, seed: int) -> None:
        super().__init__()
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]])
        self.per_class = int(per_class)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        smallest = int(self.counts.min())
        if smallest < self.per_class:
            raise DataError(
                f"data.images_per_class={self.per_class} is more than the {smallest} images of the smallest "
                f"training class; lower data.images_per_class to at most {smallest}."
            )
        drawn = len(self.counts) * self.per_class
        if self.batch_size > drawn:
            raise DataError(
                f"data.image_batch_size={self.batch_size} is more than the {drawn} images drawn per batch "
                f"({len(self.counts)} classes x data.images_per_class={self.per_class}); lower "
                f"data.image_batch_size or raise data.images_per_class."
            )
        self.n_batches = math.ceil(int(self.counts.sum()) / self.batch_size)

    def batch_indices(self, batch: int) -> np.ndarray:
        """Image indices of batch ``batch`` of the epoch: ``per_class`` of each class, then ``batch_size`` of those."""
        rng = np.random.default_rng([self.seed, self.epoch, int(batch)])
        per_class = [rng.choice(count, self.per_class, replace=False) for count in self.counts]
        drawn = np.concatenate([offset + chosen for offset, chosen in zip(self.offsets, per_class)])
        return drawn[rng.permutation(drawn.size)[: self.batch_size]]

    def rank_batches(self) -> range:
        """The batches of an epoch this rank serves."""
        rank, world = rank_and_world()
        return range(rank, self.n_batches - self.n_batches % world, world)

    def epoch_indices(self) -> list[int]:
        """This rank's batches of the epoch, one after the other."""
        return [int(i) for b in self.rank_batches() for i in self.batch_indices(b)]

    def __len__(self) -> int:
        return len(self.rank_batches()) * self.batch_size
