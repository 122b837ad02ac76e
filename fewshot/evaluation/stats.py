"""Accuracy statistics over evaluation episodes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.classification import multiclass_accuracy

Z_95 = 1.96


def episode_accuracy(logits: Tensor, labels: Tensor, n_way: int) -> Tensor:
    """Per-episode query accuracy ``[B]`` in [0, 1] of scores ``[B, N*Q, N]`` against labels ``[B, N*Q]``."""
    return multiclass_accuracy(
        logits.detach().argmax(-1), labels, num_classes=n_way, average="micro", multidim_average="samplewise"
    )


def mean_ci95(values: Sequence[float] | Tensor) -> tuple[float, float]:
    """Mean and 95% confidence half-width ``1.96 * std / sqrt(n)`` with the sample std (ddof=1)."""
    x = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = x.numel()
    if n == 0:
        raise ValueError("No values to summarise.")
    mean = x.mean().item()
    if n == 1:
        return mean, float("nan")
    return mean, Z_95 * x.std(unbiased=True).item() / math.sqrt(n)
