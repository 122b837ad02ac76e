"""Hand-designed optimizers as update rules: SGD, momentum / Nesterov, RMSprop and Adam.

Each is elementwise, so ``B`` draws of ``P`` coordinates run as one ``[B, P]`` tensor, and each
follows ``torch.optim``'s update (no weight decay) step for step; the tests check them against it.
The learning rate is left open in the configs (``_partial_``) and tuned on a grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fewshot.learned_optimizer.errors import check_positive


@dataclass(frozen=True)
class HandDesigned:
    """What every hand-designed rule has: a positive learning rate."""

    lr: float

    def __post_init__(self) -> None:
        check_positive("lr", self.lr)


@dataclass(frozen=True)
class SGD(HandDesigned):
    """``g_t = -lr * grad_t``."""

    def __call__(self, grad: Tensor, state: None) -> tuple[Tensor, None]:
        """One step: ``grad [B, P]`` -> ``update [B, P]``; there is no state."""
        return -self.lr * grad, None


@dataclass(frozen=True)
class Momentum(HandDesigned):
    """Heavy-ball momentum, or Nesterov's accelerated gradient (NAG) as ``torch.optim.SGD`` has it.

    ``b_t = momentum * b_{t-1} + grad_t`` (``b_1 = grad_1``); ``g_t = -lr * b_t``, or with
    ``nesterov``, ``g_t = -lr * (grad_t + momentum * b_t)``.
    """

    momentum: float = 0.9
    nesterov: bool = False

    def __call__(self, grad: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """One step; ``state`` is the velocity ``[B, P]``."""
        velocity = grad if state is None else self.momentum * state + grad
        direction = grad + self.momentum * velocity if self.nesterov else velocity
        return -self.lr * direction, velocity


@dataclass(frozen=True)
class RMSprop(HandDesigned):
    """``v_t = alpha * v_{t-1} + (1 - alpha) * grad_t^2``; ``g_t = -lr * grad_t / (sqrt(v_t) + eps)``."""

    alpha: float = 0.99
    eps: float = 1e-8

    def __call__(self, grad: Tensor, state: Tensor | None) -> tuple[Tensor, Tensor]:
        """One step; ``state`` is the average of squared gradients ``[B, P]``."""
        previous = torch.zeros_like(grad) if state is None else state
        square_avg = self.alpha * previous + (1 - self.alpha) * grad * grad
        return -self.lr * grad / (square_avg.sqrt() + self.eps), square_avg


@dataclass(frozen=True)
class Adam(HandDesigned):
    """Adam with bias correction (Kingma & Ba 2015); ``betas`` decay the first and second moment estimates."""

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __call__(self, grad: Tensor, state: tuple[Tensor, Tensor, int] | None) -> tuple[Tensor, tuple]:
        """One step; ``state`` is ``(m [B, P], v [B, P], t)``."""
        beta1, beta2 = self.betas
        m, v, t = (torch.zeros_like(grad), torch.zeros_like(grad), 0) if state is None else state
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad * grad
        t += 1
        denom = v.sqrt() / math.sqrt(1 - beta2**t) + self.eps
        return -self.lr / (1 - beta1**t) * m / denom, (m, v, t)


__all__ = ["SGD", "Adam", "Momentum", "RMSprop"]
