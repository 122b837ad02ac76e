"""Baseline-NN of Ravi & Larochelle (``model=baseline_nn``, ``fewshot.methods.baseline_nn``): nearest
neighbour on the pre-trained embedding."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

import fewshot
from fewshot.methods.baseline_nn import BaselineNearestNeighbour, nearest_neighbour_logits
from fewshot.reporting.results import RESULTS_FILE
from fewshot.run.training import train
from tests.conftest import compose_config
from tests.methods.test_pretrained import Flat, batched, single_episode
from tests.pixel_nn import pixel_nn_accuracy


def test_nn_golden_values_and_cosine_differs_from_euclidean():
    # class 0 far along x, class 1 near the origin; the query points along class 0 but lies close to class 1
    support = torch.tensor([[10.0, 0.0], [1.0, 1.0]]).view(2, 2, 1, 1)
    query = torch.tensor([[2.0, 0.5]]).view(1, 2, 1, 1)
    episode = batched(single_episode(support, [0, 1], query, [0], 2))
    cosine = BaselineNearestNeighbour(Flat(), torch.optim.SGD, metric="cosine")(episode)
    euclidean = BaselineNearestNeighbour(Flat(), torch.optim.SGD, metric="euclidean")(episode)
    assert cosine.shape == euclidean.shape == (1, 1, 2)
    assert cosine[0, 0].tolist() == pytest.approx([2 / math.sqrt(4.25), 2.5 / math.sqrt(8.5)])
    assert euclidean[0, 0].tolist() == pytest.approx([-math.sqrt(64.25), -math.sqrt(1.25)])
    assert cosine.argmax(-1).item() == 0
    assert euclidean.argmax(-1).item() == 1


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nn_predicts_the_label_of_the_nearest_support_example(metric):
    g = torch.Generator().manual_seed(0)
    support, query = torch.randn(2, 12, 6, generator=g), torch.randn(2, 9, 6, generator=g)
    labels = torch.arange(4).repeat_interleave(3).expand(2, -1)
    logits = nearest_neighbour_logits(query, support, labels, 4, metric)
    if metric == "cosine":
        nearest = (F.normalize(query, dim=-1) @ F.normalize(support, dim=-1).transpose(1, 2)).argmax(-1)
    else:
        nearest = torch.cdist(query, support).argmin(-1)
    assert logits.shape == (2, 9, 4)
    assert torch.equal(logits.argmax(-1), torch.gather(labels, 1, nearest))


def test_nn_rejects_an_unknown_metric():
    with pytest.raises(ValueError, match="metric must be one of"):
        BaselineNearestNeighbour(Flat(), torch.optim.SGD, metric="manhattan")


# -- end to end --------------------------------------------------------------------------------------
def test_baseline_nn_trains_as_a_classifier_and_tests_on_episodes(tiny_config):
    cfg = tiny_config("model=baseline_nn")
    results = train(cfg)
    assert (Path(cfg.paths.output_dir) / RESULTS_FILE).is_file()
    assert results["method"] == "Baseline-NN"
    assert results["config"]["model"]["n_train_classes"] == 30  # injected from embedded_tiny
    assert 0.0 <= results["test"]["acc"] <= 1.0
    loaded = fewshot.load(results["checkpoint"])
    assert isinstance(loaded, BaselineNearestNeighbour) and loaded.classifier.out_features == 30


def test_baseline_nn_learns_on_embedded_default(tmp_path):
    cfg = compose_config(
        [
            "trainer=cpu",
            "logger=none",
            "callbacks=none",
            "trainer.max_epochs=1",
            "data.val_episodes=5",
            "data=embedded",
            "data.test_episodes=200",
            "data.source.train_classes=200",
            "data.source.val_classes=20",
            "data.source.test_classes=100",
            "model=baseline_nn",
        ],
        tmp_path,
    )
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    pixel_nn = pixel_nn_accuracy(datamodule.samplers["test"], 200).mean().item()
    results = train(cfg)
    acc = results["test"]["acc"]
    print(f"embedded 5-way 1-shot: Baseline-NN {acc:.3f}, raw-pixel NN {pixel_nn:.3f}")
    # measured: 0.666 vs 0.443 (one epoch of SGD, 125 batches)
    assert acc > 0.55
    assert acc > pixel_nn + 0.12
