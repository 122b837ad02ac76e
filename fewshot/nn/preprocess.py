"""Gradient and loss preprocessing of Andrychowicz et al. (2016), used by the Meta-Learner LSTM.

Raw gradients span many orders of magnitude, so each value ``x`` is split into two features:

    x -> (log(|x|) / p, sign(x))   if |x| >= e^-p
         (-1, e^p * x)             otherwise

The two branches meet at ``|x| = e^-p`` (both give ``(-1, sign x)``), so the map is continuous.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def preprocess(x: Tensor, p: float = 10.0, dim: int = -1) -> Tensor:
    """Map every value of ``x`` to its two preprocessed features.

    The logarithm is taken of ``|x|`` clamped to ``e^-p`` and the linear branch of ``x`` clamped
    to ``[-e^-p, e^-p]``, so the branch that ``torch.where`` discards never makes ``inf`` or NaN
    (for 0, denormals or values near the float maximum).

    Args:
        x: any shape ``[...]``.
        p: the scale; 10 in both papers.
        dim: where the new feature axis goes: ``-1`` gives ``[..., 2]``; the Meta-Learner
            uses ``0`` on a flat gradient to get the coordinate-last ``[2, n]`` it multiplies.

    Returns:
        ``[..., 2]`` (or the feature axis at ``dim``): ``(log-magnitude, sign-or-scaled value)``.
    """
    threshold = math.exp(-p)
    magnitude = x.abs()
    large = magnitude >= threshold
    log_part = torch.where(large, magnitude.clamp_min(threshold).log() / p, -1.0)
    sign_part = torch.where(large, x.sign(), x.clamp(-threshold, threshold) * math.exp(p))
    return torch.stack([log_part, sign_part], dim)


__all__ = ["preprocess"]
