"""The episodic LightningDataModule shared by every method."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from fewshot.data.classes import SPLITS, ClassImages, check_splits, joined
from fewshot.data.classification import (
    IMAGE_SAMPLINGS,
    ClassBalancedIndexSampler,
    FlatImages,
    LabelledImages,
    ShuffledIndexSampler,
    collate_labelled,
)
from fewshot.data.episode import Episode, collate_episodes
from fewshot.data.errors import DataError
from fewshot.data.images import normalise
from fewshot.data.resumable import ResumableLoader
from fewshot.data.sampler import EpisodeDataset, EpisodeIndexSampler, EpisodeSampler, EpisodeSpec
from fewshot.data.source import DatasetSource
from fewshot.methods.choices import check_choice


def training_setting(name: str, value: int | None, default: int) -> int:
    """``data.train_<name>``, or ``default`` (the evaluation ``data.<name>``) when it is null."""
    if value is None:
        return default
    if not is_int(value) or value < 1:
        raise DataError(
            f"data.train_{name} must be a positive integer, or null for data.{name}={default}; got {value!r}."
        )
    return value


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (a bool is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_data_settings(
    *,
    seed: object,
    eval_seed: object,
    num_workers: object,
    image_batch_size: object,
    images_per_class: object,
    image_size: object,
    channels: object,
    mean: object,
    std: object,
) -> None:
    """Refuse, before any data is read, settings that would otherwise fail only when first used
    (a negative ``eval_seed`` at the first validation, a fractional count at test time)."""
    for name, value in (("seed", seed), ("eval_seed", eval_seed), ("num_workers", num_workers)):
        if not is_int(value) or value < 0:
            fix = "set the top-level seed=0 or another non-negative integer" if name == "seed" else f"set data.{name}=0"
            raise DataError(f"data.{name} must be a non-negative integer, got {value!r}; {fix}.")
    positive = (
        ("image_batch_size", image_batch_size),
        ("images_per_class", images_per_class),
        ("image_size", image_size),
        ("channels", channels),
    )
    for name, value in positive:
        if not is_int(value) or value < 1:
            raise DataError(f"data.{name} must be a positive integer, got {value!r}; set it >= 1.")
    for name, stats in (("mean", mean), ("std", std)):
        if stats is None:
            continue
        values = list(stats) if isinstance(stats, Sequence) and not isinstance(stats, str) else [stats]
        if not values or not all(isinstance(v, numbers.Real) and math.isfinite(v) for v in values):
            raise DataError(f"data.{name} must be null or a list of finite numbers (one per channel), got {stats!r}.")
        if name == "std" and any(v <= 0 for v in values):
            raise DataError(f"data.std must be positive (images are divided by it), got {stats!r}.")


class EpisodicDataModule(pl.LightningDataModule):
    """Serves N-way K-shot episodes from a dataset source.

    Training episodes are drawn from the run's ``seed``; validation and test episodes from
    ``eval_seed``, which is the same for every run and method, so all methods are scored on
    identical episodes. Training may use a different episode shape (``train_n_way`` etc.,
    defaulting to the evaluation shape). Batches are meta-batches of ``Episode``s with uint8
    images; after the transfer to the device they become floats, scaled to [0, 1] and
    normalised with ``mean``/``std``. ``image_size`` and ``channels`` declare the image shape
    the models are built for; it is checked against the loaded images. Baselines pre-trained as
    classifiers read batches of ``image_batch_size`` training images instead: every image once
    per epoch in a fresh order (``image_sampling="shuffle"``), or, as the official baselines'
    pre-training, ``images_per_class`` random images of every class, then ``image_batch_size`` of
    those (``"class_balanced"``, see ClassBalancedIndexSampler). With ``train_on_val`` training
    draws from the training and validation classes together (the ProtoNet code's retraining on
    train + validation); validation episodes are then of trained-on classes.
    """

    def __init__(
        self,
        source: DatasetSource,
        image_size: int,
        channels: int,
        n_way: int = 5,
        n_shot: int = 1,
        n_query: int = 15,
        train_n_way: int | None = None,
        train_n_shot: int | None = None,
        train_n_query: int | None = None,
        train_episodes: int = 1000,
        val_episodes: int = 200,
        test_episodes: int = 600,
        meta_batch_size: int = 1,
        eval_batch_size: int = 1,
        seed: int = 0,
        eval_seed: int = 0,
        num_workers: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        image_batch_size: int = 32,
        image_sampling: str = "shuffle",
        images_per_class: int = 5,
        train_on_val: bool = False,
    ) -> None:
        super().__init__()
        self.source = source
        self.declared_shape = (channels, image_size, image_size)
        self.eval_spec = EpisodeSpec(n_way, n_shot, n_query)
        self.train_spec = EpisodeSpec(
            training_setting("n_way", train_n_way, n_way),
            training_setting("n_shot", train_n_shot, n_shot),
            training_setting("n_query", train_n_query, n_query),
        )
        self.n_episodes = {"train": train_episodes, "val": val_episodes, "test": test_episodes}
        for split, n in self.n_episodes.items():
            if not is_int(n) or n < 1:
                raise DataError(f"data.{split}_episodes must be a positive integer, got {n!r}; set it >= 1.")
        for name, size in (("meta_batch_size", meta_batch_size), ("eval_batch_size", eval_batch_size)):
            if not is_int(size) or size < 1:
                raise DataError(
                    f"data.{name} must be a positive number of episodes per batch, got {size!r}; set it >= 1."
                )
        check_data_settings(
            seed=seed,
            eval_seed=eval_seed,
            num_workers=num_workers,
            image_batch_size=image_batch_size,
            images_per_class=images_per_class,
            image_size=image_size,
            channels=channels,
            mean=mean,
            std=std,
        )
        self.meta_batch_size = meta_batch_size
        self.eval_batch_size = eval_batch_size
        self.seed = seed
        self.eval_seed = eval_seed
        self.num_workers = num_workers
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)
        check_choice("data.image_sampling", image_sampling, IMAGE_SAMPLINGS)
        if not isinstance(train_on_val, bool):
            raise DataError(f"data.train_on_val must be true or false, got {train_on_val!r}.")
        self.train_on_val = train_on_val
        self.image_batch_size = image_batch_size
        self.image_sampling = image_sampling
        self.images_per_class = images_per_class
        # "episodes" for episodic methods; "images" for baselines pre-trained as classifiers
        self.train_batches = "episodes"
        self.splits: dict[str, ClassImages] | None = None
        self.samplers: dict[str, EpisodeSampler] = {}

    def setup(self, stage: str | None = None) -> None:
        """Decode the dataset and build the three episode samplers, once (later calls return at once)."""
        if self.splits is not None:
            return
        self.splits = check_splits(self.source.load(), self.source.name)
        if self.train_on_val:
            self.splits["train"] = joined(self.splits["train"], self.splits["val"])
        if self.splits["train"].image_shape != self.declared_shape:
            raise DataError(
                f"{self.source.name} images have shape {self.splits['train'].image_shape} (C, H, W) but the "
                f"config declares {self.declared_shape}; set data.channels and data.image_size to match."
            )
        channels = self.declared_shape[0]
        for name, stats in (("mean", self.mean), ("std", self.std)):
            if stats is not None and stats.numel() not in (1, channels):
                raise DataError(
                    f"data.{name} has {stats.numel()} values but the images have {channels} channels; "
                    f"give one value or one per channel."
                )
        self.samplers = {
            "train": EpisodeSampler(self.splits["train"], self.train_spec, self.seed, "train"),
            "val": EpisodeSampler(self.splits["val"], self.eval_spec, self.eval_seed, "val"),
            "test": EpisodeSampler(self.splits["test"], self.eval_spec, self.eval_seed, "test"),
        }

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images, after ``setup()``."""
        self.setup()
        assert self.splits is not None
        return self.splits["train"].image_shape

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        training = split == "train"
        settings = dict(
            dataset=EpisodeDataset(self.samplers[split], self.n_episodes[split]),
            batch_size=self.meta_batch_size if training else self.eval_batch_size,
            sampler=EpisodeIndexSampler(self.n_episodes[split], advance_per_epoch=training),
            collate_fn=collate_episodes,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
        if training:
            return ResumableLoader(**settings, trained_batches=self.trained_batches)
        return DataLoader(**settings)

    def trained_batches(self) -> int | None:
        """Batches of the epoch in progress that the fit's training loop has finished (None outside a fit)."""
        trainer = self.trainer
        if trainer is None:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> DataLoader:
        """Meta-batches of training episodes, new ones every epoch (or, with
        ``train_batches == "images"``, classification batches of training images: ``image_loader``)."""
        if self.train_batches == "images":
            return self.image_loader()
        return self._loader("train")

    def image_loader(self) -> DataLoader:
        """Batches of training images with their class index, drawn as ``image_sampling`` says."""
        self.setup()
        assert self.splits is not None
        dataset = FlatImages(self.splits["train"])
        if self.image_sampling == "class_balanced":
            counts = self.splits["train"].counts
            sampler = ClassBalancedIndexSampler(counts, self.images_per_class, self.image_batch_size, self.seed)
        else:
            sampler = ShuffledIndexSampler(len(dataset), self.seed)
        return ResumableLoader(
            dataset,
            trained_batches=self.trained_batches,
            batch_size=self.image_batch_size,
            sampler=sampler,
            collate_fn=collate_labelled,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    @property
    def n_train_classes(self) -> int:
        """Number of meta-training classes."""
        self.setup()
        assert self.splits is not None
        return len(self.splits["train"])

    def val_dataloader(self) -> DataLoader:
        """The fixed validation episodes."""
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        """The fixed test episodes (the same for every run with the same ``eval_seed``)."""
        return self._loader("test")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[..., C, H, W]`` -> float in [0, 1], then ``(x - mean) / std``, as predict does (``normalise``)."""
        return normalise(images, self.mean, self.std)

    def transfer_batch_to_device(
        self, batch: Episode | LabelledImages, device: torch.device, dataloader_idx: int
    ) -> Episode | LabelledImages:
        """Move a batch to the device."""
        return batch.to(device)

    def on_after_batch_transfer(self, batch: Episode | LabelledImages, dataloader_idx: int) -> Episode | LabelledImages:
        """Turn uint8 images into normalised floats on the device."""
        if isinstance(batch, LabelledImages):
            return batch.with_images(self.normalize(batch.images))
        return batch.with_images(self.normalize(batch.support_images), self.normalize(batch.query_images))

    def tuning_episodes(self, count: int, device: torch.device | str = "cpu") -> Iterator[tuple[int, Episode]]:
        """``(index, episode)`` of ``count`` validation-split episodes for choosing a method's
        settings (Baseline-finetune's grid), normalised as the loaders' episodes: the ones right
        after the scored validation episodes, so never a test episode nor one that ``val/acc``
        is computed on."""
        self.setup()
        start = self.n_episodes["val"]
        for index in range(start, start + count):
            yield index, self.on_after_batch_transfer(self.samplers["val"][index].to(device), 0)

    def episode_fingerprint(self, split: str) -> str:
        """Fingerprint of the evaluation episodes of ``split`` (see EpisodeSampler)."""
        self.setup()
        return self.samplers[split].fingerprint(self.n_episodes[split])

    def describe(self) -> dict:
        """Settings to record with results."""
        return {
            "dataset": self.source.name,
            "n_way": self.eval_spec.n_way,
            "n_shot": self.eval_spec.n_shot,
            "n_query": self.eval_spec.n_query,
            "train_n_way": self.train_spec.n_way,
            "train_n_shot": self.train_spec.n_shot,
            "train_n_query": self.train_spec.n_query,
            "eval_seed": self.eval_seed,
            "classes": {s: len(self.splits[s]) for s in SPLITS} if self.splits else None,
        }
