"""Random quadratics ``f(theta) = ||W theta - y||^2``, the first experiment of Andrychowicz et al."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.learned_optimizer.errors import ConfigError, check_positive


@dataclass(frozen=True)
class QuadraticDraws:
    """``B`` quadratics, ``w [B, D, D]`` and ``y [B, D]``, with their starting points ``theta0 [B, D]``."""

    w: Tensor
    y: Tensor
    theta0: Tensor

    def loss(self, theta: Tensor, step: int) -> Tensor:
        """``||W theta - y||^2`` of every draw: ``theta [B, D]`` -> ``[B]`` (the same at every step)."""
        residual = torch.einsum("bij,bj->bi", self.w, theta) - self.y
        return residual.square().sum(dim=1)


class Quadratics:
    """``f(theta) = ||W theta - y||^2`` with ``W``, ``y`` i.i.d. standard normal per draw and
    ``theta0 ~ N(0, init_std^2)`` (0.01 in the paper's code).
    """

    def __init__(self, dim: int = 10, steps: int = 100, init_std: float = 0.01, name: str = "quadratic") -> None:
        check_positive("problem.dim", dim)
        check_positive("problem.steps", steps, "the paper runs 100 steps")
        if init_std < 0:
            raise ConfigError(f"problem.init_std must be non-negative, got {init_std}: set problem.init_std >= 0.")
        self.dim, self.steps, self.init_std, self.name = int(dim), int(steps), float(init_std), name

    def sample(self, n_draws: int, seed: int, steps: int | None = None) -> QuadraticDraws:
        """``n_draws`` quadratics drawn from a generator seeded with ``seed`` (any number of ``steps``)."""
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n_draws, self.dim, self.dim, generator=g)
        y = torch.randn(n_draws, self.dim, generator=g)
        theta0 = torch.randn(n_draws, self.dim, generator=g) * self.init_std
        return QuadraticDraws(w=w, y=y, theta0=theta0)


__all__ = ["QuadraticDraws", "Quadratics"]
