"""The shared base of Ravi & Larochelle's Table-1 baselines (``fewshot.methods.pretrained``): the
classifier pre-trained over all meta-training classes, its learning-rate decay, and the two baseline
configs; plus the small embeddings and episodes the baseline tests share."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

from fewshot.data.classification import LabelledImages
from fewshot.data.episode import Episode
from fewshot.methods.baseline_nn import BaselineNearestNeighbour
from fewshot.methods.pretrained import PretrainedClassifier, inverse_time_decay, inverse_time_lr
from fewshot.models.conv4 import Conv4
from tests.conftest import compose_config


class Flat(nn.Module):
    """Identity embedding of ``[B, C, 1, 1]`` images (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


def single_episode(support: torch.Tensor, support_labels, query: torch.Tensor, query_labels, n_way: int) -> Episode:
    return Episode(
        support, torch.as_tensor(support_labels), query, torch.as_tensor(query_labels), n_way, torch.tensor(0)
    )


def batched(e: Episode) -> Episode:
    return Episode(
        e.support_images[None],
        e.support_labels[None],
        e.query_images[None],
        e.query_labels[None],
        e.n_way,
        e.index[None],
    )


def random_episode(seed: int = 0, n_way: int = 3, n_shot: int = 2, n_query: int = 4, side: int = 16) -> Episode:
    """Class-dependent random images, so that fine-tuning has something to learn."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_way, 1, side, side, generator=g)
    support = centres.repeat_interleave(n_shot, 0) + 0.5 * torch.randn(n_way * n_shot, 1, side, side, generator=g)
    query = centres.repeat_interleave(n_query, 0) + 0.5 * torch.randn(n_way * n_query, 1, side, side, generator=g)
    labels = torch.arange(n_way)
    return single_episode(support, labels.repeat_interleave(n_shot), query, labels.repeat_interleave(n_query), n_way)


# -- the pre-trained classifier --------------------------------------------------------------------
def test_pretrained_classifier_is_only_a_base():
    with pytest.raises(TypeError, match="baseline_nn or model=baseline_finetune"):
        PretrainedClassifier(Conv4(1, 8, 16), torch.optim.SGD, n_train_classes=4)


@pytest.mark.filterwarnings("ignore:You are trying to")
def test_training_step_is_cross_entropy_over_all_training_classes():
    torch.manual_seed(0)
    method = BaselineNearestNeighbour(Conv4(1, 8, 16), torch.optim.SGD, n_train_classes=7)
    assert method.classifier.out_features == 7
    batch = LabelledImages(torch.rand(5, 1, 16, 16), torch.tensor([0, 6, 3, 3, 1]))
    loss = method.training_step(batch, 0)
    expected = F.cross_entropy(method.classifier(method.backbone(batch.images)), batch.labels)
    assert torch.allclose(loss, expected)


def test_training_without_n_train_classes_raises_a_clear_error():
    method = BaselineNearestNeighbour(Conv4(1, 8, 16), torch.optim.SGD)
    with pytest.raises(ValueError, match="needs n_train_classes"):
        method.training_step(LabelledImages(torch.rand(2, 1, 16, 16), torch.tensor([0, 1])), 0)


class TrainClasses:
    """The one thing a datamodule tells a pre-trained baseline: its number of meta-training classes."""

    n_train_classes = 9


def test_the_head_is_built_over_the_datas_training_classes_by_the_method_itself():
    torch.manual_seed(0)
    method = BaselineNearestNeighbour(Conv4(1, 8, 16), torch.optim.SGD)
    assert method.classifier is None
    assert method.fill_from_data(TrainClasses()) == {"n_train_classes": 9}  # kept in the run's config
    assert method.n_train_classes == 9 and method.classifier.out_features == 9
    torch.manual_seed(0)
    given = BaselineNearestNeighbour(Conv4(1, 8, 16), torch.optim.SGD, n_train_classes=9)
    assert torch.equal(given.classifier.weight, method.classifier.weight)  # the same draw as built in __init__
    assert given.fill_from_data(TrainClasses()) == {}  # a configured number is kept


def test_torch7_sgd_decay_is_a_per_step_learning_rate_decay():
    assert [inverse_time_lr(0.1, 1.0, t) for t in range(3)] == pytest.approx([0.1, 0.05, 0.1 / 3])
    method = BaselineNearestNeighbour(
        Conv4(1, 8, 16),
        lambda params: torch.optim.SGD(params, lr=0.01),
        n_train_classes=3,
        scheduler=lambda optimizer: inverse_time_decay(optimizer, decay=0.5),
    )
    config = method.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert optimizer.param_groups[0]["weight_decay"] == 0
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / (1 + 2 * 0.5))


def test_model_configs_follow_the_final_official_baseline_config(tmp_path):
    cfg = compose_config(["model=baseline_finetune", "data=embedded_tiny"], tmp_path)
    grid = instantiate(cfg.model.grid)
    assert grid.lr == (0.5, 0.1, 0.01, 0.001, 0.0001, 0.00001)
    assert grid.decay == (1.0, 0.1, 0.01, 0.001, 0.0001, 0.00001, 0.0)
    assert grid.updates == (15,)
    for model in ("baseline_finetune", "baseline_nn"):
        cfg = compose_config([f"model={model}", "data=embedded_tiny"], tmp_path / model)
        assert cfg.model.optimizer._target_ == "torch.optim.Adam" and cfg.model.optimizer.lr == 0.001
        assert cfg.model.scheduler is None
        assert cfg.model.backbone.hidden == 64
        assert cfg.data.image_batch_size == 64
