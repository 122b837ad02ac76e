"""Training loaders that resume mid-epoch: Lightning keeps their position in every checkpoint.

A training epoch's indices are a pure function of the epoch (and the rank), so the position in
training is (epoch, how many indices of it were served): :class:`ResumableLoader`'s ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of this process; ``(0, 1)`` outside distributed training."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class EpochSampler(Sampler[int]):
    """Indices of one epoch at a time (set by Lightning through ``set_epoch``); the next pass
    may start part-way through an epoch (``resume_at``), as a resumed run does once."""

    def __init__(self) -> None:
        self.epoch = 0
        self.start = 0  # where in this epoch's indices the next pass begins

    def epoch_indices(self) -> Sequence[int]:
        """Every index this process serves in ``self.epoch``, in order."""
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch; a new epoch starts at its beginning."""
        if int(epoch) != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def resume_at(self, epoch: int, position: int) -> None:
        """Make the next pass serve ``epoch`` from its ``position``-th index on."""
        self.epoch, self.start = int(epoch), int(position)

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()[self.start :]
        self.start = 0
        return iter(indices)

    def __len__(self) -> int:
        return len(self.epoch_indices())


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` whose state, the epoch and the number
    of its indices the training loop has trained on, is saved in Lightning's checkpoints.

    ``trained_batches`` (given by the datamodule) says how many batches of the epoch in progress the
    training loop has finished; without it, the batches handed out so far count (a batch fetched but
    not yet trained on when a checkpoint is saved would then be skipped on resume).
    """

    def __init__(self, *args: Any, trained_batches: Callable[[], int | None] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(self.sampler, EpochSampler):
            raise TypeError(f"ResumableLoader needs an EpochSampler, got {type(self.sampler).__name__}.")
        self.trained_batches = trained_batches
        self.epoch = 0
        self.start = 0  # where in the epoch's indices this pass began
        self.served = 0  # batches handed out in this pass

    def __iter__(self) -> Iterator[Any]:
        return self._serve()

    def _serve(self) -> Iterator[Any]:
        # a generator: its body, and the sampler's pass, start at the first batch requested, after
        # Lightning's set_epoch (Lightning creates the iterator of a run's first epoch before it)
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        self.epoch, self.start, self.served = sampler.epoch, sampler.start, 0
        for batch in super().__iter__():
            self.served += 1
            yield batch

    def position(self) -> int:
        """How many of the epoch's indices the training loop has trained on."""
        trained = self.trained_batches() if self.trained_batches is not None else None
        step = self.batch_size or 1
        done = trained * step if trained is not None else self.start + self.served * step
        return min(done, len(self.sampler))

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "position"}``: the epoch in progress and how many of its indices were trained on."""
        return {"epoch": self.epoch, "position": self.position()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue where ``state`` was saved (a finished epoch continues with the next one)."""
        sampler = self.sampler
        assert isinstance(sampler, EpochSampler)
        epoch, position = int(state["epoch"]), int(state["position"])
        if position >= len(sampler):
            epoch, position = epoch + 1, 0
        sampler.resume_at(epoch, position)
        self.epoch, self.start, self.served = epoch, position, 0
