"""One flat parameter vector for a learner, and the views ``functional_call`` needs.

The Meta-Learner's cell state is the learner's parameters as a single vector ``theta [n]``;
the learner runs on ``{name: view}`` built from it by ``split`` + ``view`` (no copies).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FlatLayout:
    """Names and shapes of a module's parameters, in ``named_parameters()`` order."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @classmethod
    def of(cls, module: nn.Module) -> FlatLayout:
        """The layout of ``module``'s parameters."""
        named = list(module.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named))

    @property
    def numels(self) -> tuple[int, ...]:
        """Number of coordinates of each parameter."""
        return tuple(s.numel() for s in self.shapes)

    @property
    def n_coords(self) -> int:
        """Length of the flat vector."""
        return sum(self.numels)

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """``{name: tensor}`` -> ``[n]`` (a copy, in layout order)."""
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """``[n]`` -> ``{name: view}``; the views share ``flat``'s storage and autograd history."""
        chunks = flat.split(self.numels)
        return {name: c.view(s) for name, c, s in zip(self.names, chunks, self.shapes, strict=True)}

    def segments(self, groups: Mapping[str, str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """Contiguous runs of coordinates that belong to one group (e.g. one layer).

        Args:
            groups: parameter name -> group name (e.g. ``conv4.layer_names(model)``).

        Returns:
            ``(group_names, sizes)``: the groups in order and their number of coordinates.

        Raises:
            ValueError: if a group's parameters are not adjacent in the layout.
        """
        names: list[str] = []
        sizes: list[int] = []
        for name, numel in zip(self.names, self.numels, strict=True):
            group = groups[name]
            if names and names[-1] == group:
                sizes[-1] += numel
            elif group in names:
                raise ValueError(f"Parameters of group {group!r} are not contiguous in the layout.")
            else:
                names.append(group)
                sizes.append(numel)
        return tuple(names), tuple(sizes)


__all__ = ["FlatLayout"]
