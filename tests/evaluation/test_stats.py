"""Accuracy statistics: per-episode accuracy and the 95% confidence interval."""

import math

import pytest
import torch

from fewshot.evaluation.stats import episode_accuracy, mean_ci95


def test_mean_ci95_uses_sample_std_and_1_96():
    values = [0.5, 0.7, 0.9, 0.6]
    mean, ci = mean_ci95(values)
    sample_std = math.sqrt(sum((v - 0.675) ** 2 for v in values) / 3)
    assert mean == pytest.approx(0.675)
    assert ci == pytest.approx(1.96 * sample_std / 2)


def test_mean_ci95_single_value_has_undefined_ci():
    mean, ci = mean_ci95([0.8])
    assert mean == pytest.approx(0.8) and math.isnan(ci)


def test_mean_ci95_rejects_empty():
    with pytest.raises(ValueError, match="No values"):
        mean_ci95([])


def test_episode_accuracy_is_per_episode():
    labels = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    preds = torch.tensor([[0, 1, 1, 1], [1, 0, 0, 1]])
    logits = torch.nn.functional.one_hot(preds, 2).float()
    assert episode_accuracy(logits, labels, 2).tolist() == pytest.approx([0.75, 0.0])
