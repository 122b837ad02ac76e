"""A small MLP classifier as the optimizee: the second experiment of Andrychowicz et al. (MNIST).

Each draw is a freshly initialised network and its own sequence of random minibatches; its
parameters are one flat vector, and the loss calls the network functionally on views of it
(``torch.func.functional_call``), batched over draws with ``torch.func.vmap``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fewshot.learned_optimizer.errors import ConfigError, check_positive
from fewshot.learned_optimizer.images import ImageClassification
from fewshot.nn.flat import FlatLayout

ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def build_mlp(n_inputs: int, hidden: Sequence[int], n_classes: int, activation: str) -> nn.Sequential:
    """``Linear -> activation`` per hidden layer, then a linear classifier."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"problem.activation={activation!r} is unknown: choose one of {sorted(ACTIVATIONS)}.")
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_inputs, width), ACTIVATIONS[activation]()]
        n_inputs = width
    layers.append(nn.Linear(n_inputs, n_classes))
    return nn.Sequential(*layers)


@dataclass(frozen=True)
class MLPDraws:
    """``B`` networks to train: the architecture (called functionally on views of ``theta [B, P]`` as
    ``layout`` says; its own weights are never used), the starting weights ``theta0`` and
    ``batch_index [B, steps + 1, batch_size]``, the minibatch of every draw and step.
    """

    network: nn.Module
    layout: FlatLayout
    data: ImageClassification
    batch_index: Tensor
    theta0: Tensor

    def loss(self, theta: Tensor, step: int) -> Tensor:
        """Mean cross-entropy of every draw on its minibatch ``step``: ``[B, P]`` -> ``[B]``."""
        index = self.batch_index[:, step]
        return vmap(self.draw_loss)(theta, self.data.images[index], self.data.labels[index])

    def draw_loss(self, theta: Tensor, images: Tensor, labels: Tensor) -> Tensor:
        """One draw: ``theta [P]``, ``images [M, D]``, ``labels [M]`` -> scalar loss."""
        logits = functional_call(self.network, self.layout.unflatten(theta), (images,))
        return F.cross_entropy(logits, labels)


class MLPClassification:
    """Train an MLP with random initial weights on minibatches of an image-classification set.

    Weights start ``N(0, init_std^2)``, biases at 0; ``activation`` is ``sigmoid`` (paper), ``relu`` or ``tanh``.
    """

    def __init__(
        self,
        data: ImageClassification,
        hidden: Sequence[int] = (20,),
        activation: str = "sigmoid",
        steps: int = 100,
        batch_size: int = 128,
        init_std: float = 0.1,
        name: str = "mlp",
    ) -> None:
        check_positive("problem.steps", steps, "the paper runs 100 steps")
        check_positive("problem.batch_size", batch_size, "the paper uses 128")
        for width in hidden:
            check_positive("every entry of problem.hidden", width)
        self.data, self.steps, self.batch_size = data, int(steps), int(batch_size)
        self.hidden, self.init_std, self.name = tuple(int(w) for w in hidden), float(init_std), name
        self.network = build_mlp(data.n_features, self.hidden, data.n_classes, activation)
        self.network.requires_grad_(False)
        self.layout = FlatLayout.of(self.network)

    def sample(self, n_draws: int, seed: int, steps: int | None = None) -> MLPDraws:
        """``n_draws`` initialisations and minibatch sequences for ``steps`` (default: ``self.steps``)
        optimizer steps, from a generator seeded with ``seed``."""
        g = torch.Generator().manual_seed(seed)
        parts = []
        for name, shape in zip(self.layout.names, self.layout.shapes, strict=True):
            if name.endswith("weight"):
                parts.append(torch.randn(n_draws, shape.numel(), generator=g) * self.init_std)
            else:
                parts.append(torch.zeros(n_draws, shape.numel()))
        n_images = self.data.images.shape[0]
        batch_index = torch.randint(n_images, (n_draws, (steps or self.steps) + 1, self.batch_size), generator=g)
        return MLPDraws(self.network, self.layout, self.data, batch_index, torch.cat(parts, dim=1))


__all__ = ["ACTIVATIONS", "MLPClassification", "MLPDraws", "build_mlp"]
