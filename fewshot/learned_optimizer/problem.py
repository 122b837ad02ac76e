"""What every optimizee problem provides: batches of independent draws and their losses.

An *optimizee* is one function to minimise, ``f(theta)``, with ``theta`` a flat vector of ``P``
coordinates. A :class:`Problem` draws ``B`` of them at once (random quadratics, randomly
initialised networks with their minibatch sequences), as :class:`Optimizees` whose parameters
are one tensor ``theta [B, P]``. Losses are plain functions of ``theta``, so an unrolled
optimizer's graph runs through every update.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from torch import Tensor

# Independent random streams of one seed, so that no tuning or evaluation draw is ever
# a meta-training draw.
TRAIN_STREAM = 0
VALIDATION_STREAM = 1
TUNING_STREAM = 2
EVALUATION_STREAM = 3


@runtime_checkable
class Optimizees(Protocol):
    """``B`` independent optimisation problems of ``P`` coordinates each."""

    theta0: Tensor
    """``[B, P]`` the starting point of every draw."""

    def loss(self, theta: Tensor, step: int) -> Tensor:
        """Loss of every draw at optimizer step ``step``: ``theta [B, P]`` -> ``[B]``.

        ``step`` picks what changes between steps (e.g. the minibatch); ``0 <= step <= steps``.
        """
        ...


@runtime_checkable
class Problem(Protocol):
    """A distribution of optimizees and the number of optimizer steps to run on them."""

    name: str
    steps: int

    def sample(self, n_draws: int, seed: int, steps: int | None = None) -> Optimizees:
        """``n_draws`` draws to run ``steps`` (default: ``self.steps``) optimizer steps on, a pure
        function of the arguments."""
        ...


def draw_seed(seed: int, stream: int, index: int = 0) -> int:
    """A 63-bit seed for batch ``index`` of ``stream`` (e.g. :data:`TRAIN_STREAM`) of ``seed``."""
    state = np.random.SeedSequence([seed, stream, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


__all__ = [
    "EVALUATION_STREAM",
    "TRAIN_STREAM",
    "TUNING_STREAM",
    "VALIDATION_STREAM",
    "Optimizees",
    "Problem",
    "draw_seed",
]
