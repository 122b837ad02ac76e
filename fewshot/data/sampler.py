"""Index-addressable episode sampling: episode i is a pure function of its settings."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from fewshot.data.classes import SPLITS, ClassImages
from fewshot.data.episode import Episode
from fewshot.data.errors import DataError
from fewshot.data.resumable import EpochSampler, rank_and_world


@dataclass(frozen=True)
class EpisodeSpec:
    """The shape of an episode: ``n_way`` classes, ``n_shot`` support and ``n_query`` query
    images per class."""

    n_way: int
    n_shot: int
    n_query: int

    def __post_init__(self) -> None:
        for name in ("n_way", "n_shot", "n_query"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
                raise DataError(f"{name} must be a positive integer, got {value!r}; set data.{name} >= 1.")
        if self.n_way < 2:
            raise DataError(
                f"n_way must be at least 2 for a classification episode, got {self.n_way}; set data.n_way >= 2."
            )


class EpisodeSampler:
    """Draws episode ``i`` of one split as a pure function of
    ``(seed, split, n_way, n_query, i)`` and the sorted class list.

    Queries are drawn first; the support is a prefix of a fixed permutation of the remaining
    images, so the 1-shot support is the first shot of the 5-shot support of the same
    episode (``n_shot`` is deliberately not part of the random stream).
    """

    def __init__(self, classes: ClassImages, spec: EpisodeSpec, seed: int, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        self.classes = classes
        self.spec = spec
        self.seed = int(seed)
        self.split = split
        self._check_fits()

    def _check_fits(self) -> None:
        n_classes = len(self.classes)
        spec = self.spec
        if spec.n_way > n_classes:
            raise DataError(
                f"n_way={spec.n_way} is larger than the {n_classes} classes of the {self.split!r} split; "
                f"lower n_way to at most {n_classes} or give that split more classes."
            )
        need = spec.n_shot + spec.n_query
        counts = self.classes.counts
        smallest = int(np.argmin(counts))
        if counts[smallest] < need:
            raise DataError(
                f"n_shot + n_query = {spec.n_shot} + {spec.n_query} = {need} is larger than the "
                f"{counts[smallest]} images of class {self.classes.names[smallest]!r} in the {self.split!r} split; "
                f"lower n_shot or n_query so that their sum is at most {counts[smallest]}."
            )

    def _rng(self, index: int) -> np.random.Generator:
        key = [self.seed, SPLITS.index(self.split), self.spec.n_way, self.spec.n_query, int(index)]
        if min(key) < 0:
            raise ValueError(f"Episode index and seed must be non-negative, got {key}.")
        return np.random.default_rng(key)

    def draw(self, index: int) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Indices of episode ``index``: class ids, then per class support and query image ids."""
        rng = self._rng(index)
        spec = self.spec
        class_ids = rng.permutation(len(self.classes))[: spec.n_way]
        supports, queries = [], []
        for c in class_ids:
            order = rng.permutation(self.classes.counts[c])
            queries.append(order[: spec.n_query])
            supports.append(order[spec.n_query : spec.n_query + spec.n_shot])
        return class_ids, supports, queries

    def __getitem__(self, index: int) -> Episode:
        class_ids, supports, queries = self.draw(index)
        images = self.classes.images
        support = torch.cat([images[c][torch.from_numpy(s)] for c, s in zip(class_ids, supports)])
        query = torch.cat([images[c][torch.from_numpy(q)] for c, q in zip(class_ids, queries)])
        spec = self.spec
        labels = torch.arange(spec.n_way)
        return Episode(
            support_images=support,
            support_labels=labels.repeat_interleave(spec.n_shot),
            query_images=query,
            query_labels=labels.repeat_interleave(spec.n_query),
            n_way=spec.n_way,
            index=torch.tensor(int(index)),
        )

    def fingerprint(self, n_episodes: int, start: int = 0) -> str:
        """SHA-256 over the class names and image ids of episodes ``start .. start+n-1``: two
        runs scored on the same episodes have the same fingerprint."""
        digest = hashlib.sha256()
        digest.update(repr((self.spec, self.classes.counts)).encode())
        digest.update("\n".join(self.classes.names).encode())
        for i in range(start, start + n_episodes):
            class_ids, supports, queries = self.draw(i)
            for part in (class_ids, *supports, *queries):
                digest.update(np.asarray(part, dtype=np.int64).tobytes())
        return digest.hexdigest()


class EpisodeDataset(Dataset):
    """Map-style view of a sampler: item ``i`` is episode ``i`` (any non-negative index)."""

    def __init__(self, sampler: EpisodeSampler, length: int) -> None:
        self.sampler = sampler
        self.length = int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Episode:
        return self.sampler[index]


class EpisodeIndexSampler(EpochSampler):
    """Yields the episode indices of one epoch, split across distributed ranks.

    With ``advance_per_epoch`` (training), epoch ``e`` serves episodes
    ``e*n .. (e+1)*n - 1`` so every epoch sees new episodes and any position in training is
    reproducible from (epoch, step). Evaluation streams serve ``0 .. n-1`` every time.
    Rank ``r`` of ``w`` takes every w-th index starting at r: no duplication, no padding
    (training epochs leave out their last ``n % w`` episodes so every rank takes as many steps).
    """

    def __init__(self, n_episodes: int, advance_per_epoch: bool) -> None:
        if n_episodes < 1:
            raise DataError(f"The number of episodes must be positive, got {n_episodes}.")
        super().__init__()
        self.n_episodes = int(n_episodes)
        self.advance_per_epoch = advance_per_epoch

    def epoch_indices(self) -> range:
        """The episode indices this rank serves in ``self.epoch``."""
        start = self.epoch * self.n_episodes if self.advance_per_epoch else 0
        rank, world = rank_and_world()
        n_episodes = self.n_episodes
        if self.advance_per_epoch and world > 1:
            # DDP training needs the same number of steps on every rank (each step all-reduces the
            # gradients), so the last n_episodes % world episodes of a training epoch are left out
            n_episodes -= n_episodes % world
        return range(start + rank, start + n_episodes, world)
