"""Ravi & Larochelle's Table-1 baselines: the pre-trained classifier, Baseline-NN and
Baseline-finetune (with its grid search on validation episodes)."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch import nn

import fewshot
from fewshot.data.classification import LabelledImages
from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.episode import Episode
from fewshot.evaluation.pixel_nn import pixel_nn_accuracy
from fewshot.evaluation.stats import episode_accuracy
from fewshot.methods.finetune import BaselineFinetune, FinetuneGrid, FinetuneSettings
from fewshot.methods.nearest_neighbour import BaselineNearestNeighbour, nearest_neighbour_logits
from fewshot.methods.pretrained import PretrainedClassifier, inverse_time_decay, inverse_time_lr
from fewshot.models.conv4 import Conv4
from fewshot.reporting.results import RESULTS_FILE
from fewshot.training import train
from tests.conftest import compose_config

TINY_GRID = [
    "model.grid.lr=[0.1,0.01]",
    "model.grid.decay=[0.0,0.1]",
    "model.grid.updates=[1,2]",
    "model.grid_episodes=2",
]


class Flat(nn.Module):
    """Identity embedding of ``[B, C, 1, 1]`` images (no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class TinyLinear(nn.Module):
    """A one-layer embedding small enough to check SGD steps by hand."""

    out_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


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


# -- Baseline-NN ---------------------------------------------------------------------------------
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


# -- Baseline-finetune ----------------------------------------------------------------------------
def test_fine_tuning_is_plain_sgd_on_the_whole_network_with_learning_rate_decay():
    torch.manual_seed(0)
    method = BaselineFinetune(
        TinyLinear(), torch.optim.SGD, finetune_lr=0.5, finetune_decay=1.0, finetune_updates=2, head_seed=3
    )
    e = single_episode(torch.randn(4, 3, 1, 1), [0, 0, 1, 1], torch.randn(2, 3, 1, 1), [0, 1], 2)
    head = method.new_head(2)
    bound = 1 / math.sqrt(2)
    assert head.weight.abs().max() <= bound and head.bias.abs().max() <= bound
    params = [t.detach().clone().requires_grad_() for t in (*method.backbone.parameters(), *head.parameters())]
    x = e.support_images.flatten(1)
    for lr in (0.5, 0.5 / (1 + 1.0)):  # step t uses lr / (1 + t * decay); no weight decay, no momentum
        w1, b1, w2, b2 = params
        loss = F.cross_entropy(F.linear(F.linear(x, w1, b1), w2, b2), e.support_labels)
        grads = torch.autograd.grad(loss, params)
        params = [(p - lr * g).detach().requires_grad_() for p, g in zip(params, grads)]
    *_, learner = method.fine_tune(e.support_images, e.support_labels, 2, 0.5, 1.0, 2)
    for mine, expected in zip(learner.parameters(), params):
        assert torch.allclose(mine, expected, atol=1e-6)
    assert not torch.allclose(learner[0].linear.weight, method.backbone.linear.weight)  # the backbone is tuned too


def test_fine_tuning_leaves_the_pretrained_network_and_its_statistics_untouched():
    torch.manual_seed(0)
    method = BaselineFinetune(Conv4(1, 8, 16), torch.optim.SGD, finetune_lr=0.1, finetune_decay=0.0, finetune_updates=3)
    method.eval()
    before = {k: v.clone() for k, v in method.state_dict().items() if isinstance(v, torch.Tensor)}
    episode = batched(random_episode())
    first, second = method(episode), method(episode)
    assert first.shape == (1, 12, 3)
    assert torch.equal(first, second)  # nothing carries over from one episode to the next
    for k, v in method.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k]), k


def test_grid_updates_are_nested_prefixes_of_one_fine_tuning():
    torch.manual_seed(0)
    backbone = Conv4(1, 8, 16)
    grid = FinetuneGrid(lr=[0.2, 0.05], decay=[0.0, 0.5], updates=[1, 2, 3])
    method = BaselineFinetune(backbone, torch.optim.SGD, grid=grid).eval()
    e = random_episode()
    table = method.grid_accuracy([e])
    assert table.shape == (2, 2, 3)
    for i, lr in enumerate(grid.lr):
        for j, decay in enumerate(grid.decay):
            steps = [
                method.query_logits(learner, e.query_images)
                for learner in method.fine_tune(e.support_images, e.support_labels, 3, lr, decay, 3)
            ]
            for k in (1, 2, 3):
                alone = BaselineFinetune(
                    backbone, torch.optim.SGD, finetune_lr=lr, finetune_decay=decay, finetune_updates=k
                ).eval()
                logits = alone(batched(e))
                assert torch.allclose(logits[0], steps[k - 1], atol=1e-6)
                assert table[i, j, k - 1].item() == episode_accuracy(logits, e.query_labels[None], 3).item()


def test_best_settings_skip_unscored_updates_and_keep_the_first_best():
    method = BaselineFinetune(Flat(), torch.optim.SGD, grid=FinetuneGrid([0.1, 0.01], [1.0, 0.5], [2, 3]))
    table = torch.full((2, 2, 3), 0.5, dtype=torch.float64)
    table[:, :, 0] = float("nan")  # one update is not in the grid
    table[0, 1, 2] = table[1, 0, 1] = 0.8
    assert method.best_settings(table) == FinetuneSettings(lr=0.1, decay=0.5, updates=3)


def test_fixed_updates_grid_scores_only_after_the_fixed_number_of_updates():
    torch.manual_seed(0)
    backbone = Conv4(1, 8, 16)
    grid = FinetuneGrid(lr=[0.2, 0.05], decay=[0.0, 1.0], updates=[4])
    method = BaselineFinetune(backbone, torch.optim.SGD, grid=grid).eval()
    e = random_episode()
    table = method.grid_accuracy([e])
    assert table.shape == (2, 2, 4)
    assert table[:, :, :3].isnan().all() and not table[:, :, 3].isnan().any()
    for i, lr in enumerate(grid.lr):
        for j, decay in enumerate(grid.decay):
            fixed = BaselineFinetune(
                backbone, torch.optim.SGD, finetune_lr=lr, finetune_decay=decay, finetune_updates=4
            )
            logits = fixed.eval()(batched(e))
            assert table[i, j, 3].item() == episode_accuracy(logits, e.query_labels[None], 3).item()
    assert method.best_settings(table).updates == 4


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


class FakeTrainer:
    """Only what ``grid_episode_count`` and ``searched_grid`` read from a Lightning trainer."""

    def __init__(self, fast_dev_run) -> None:
        self.fast_dev_run = fast_dev_run


@pytest.mark.parametrize(("fast_dev_run", "expected"), [(False, 7), (True, 1), (3, 3), (50, 7)])
def test_fast_dev_run_scores_only_a_few_grid_episodes(fast_dev_run, expected):
    method = BaselineFinetune(Flat(), torch.optim.SGD, grid=FinetuneGrid([0.1], [0.0], [1]), grid_episodes=7)
    assert method.grid_episode_count() == 7  # no trainer attached
    method._trainer = FakeTrainer(fast_dev_run)
    assert method.grid_episode_count() == expected


def test_fast_dev_run_searches_a_two_by_two_corner_of_the_grid():
    grid = FinetuneGrid([0.5, 0.1, 0.01], [1.0, 0.1, 0.0], [3, 5])
    method = BaselineFinetune(Flat(), torch.optim.SGD, grid=grid, grid_episodes=7)
    assert method.searched_grid() == grid  # no trainer attached
    method._trainer = FakeTrainer(False)
    assert method.searched_grid() == grid
    method._trainer = FakeTrainer(True)
    assert method.searched_grid() == FinetuneGrid([0.5, 0.1], [1.0, 0.1], [3, 5])


def test_finetune_needs_either_a_grid_or_fixed_settings():
    with pytest.raises(ValueError, match="needs a grid"):
        BaselineFinetune(Flat(), torch.optim.SGD, finetune_lr=0.1)
    with pytest.raises(ValueError, match="not both"):
        BaselineFinetune(Flat(), torch.optim.SGD, grid=FinetuneGrid([0.1], [0.0], [1]), finetune_lr=0.1)
    with pytest.raises(ValueError, match="updates >= 1"):
        FinetuneGrid([0.1], [0.0], [0])


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


class SpySampler:
    """Records every episode drawn from a sampler, and whether a grid search was running."""

    def __init__(self, sampler, split: str, log: list, searching: list) -> None:
        self.sampler, self.split, self.log, self.searching = sampler, split, log, searching

    def __getitem__(self, index: int) -> Episode:
        self.log.append((self.split, int(index), self.searching[0]))
        return self.sampler[index]

    def __getattr__(self, name: str):
        return getattr(self.sampler, name)


def test_finetune_chooses_its_settings_on_validation_episodes_only_and_keeps_them(tmp_path, monkeypatch):
    log, searching = [], [False]
    setup, select = EpisodicDataModule.setup, BaselineFinetune.select_settings

    def spied_setup(self, stage=None):
        setup(self, stage)
        if not isinstance(self.samplers["val"], SpySampler):
            self.samplers = {s: SpySampler(self.samplers[s], s, log, searching) for s in self.samplers}

    def flagged_select(self, datamodule):
        searching[0] = True
        try:
            return select(self, datamodule)
        finally:
            searching[0] = False

    monkeypatch.setattr(EpisodicDataModule, "setup", spied_setup)
    monkeypatch.setattr(BaselineFinetune, "select_settings", flagged_select)
    overrides = ["debug=tiny", "trainer=cpu", "logger=csv", "model=baseline_finetune"]
    cfg = compose_config([*overrides, *TINY_GRID], tmp_path)
    results = train(cfg)

    assert (tmp_path / RESULTS_FILE).is_file()
    assert results["method"] == "Baseline-finetune"
    assert results["config"]["model"]["n_train_classes"] == 30
    grid_draws = [(split, index) for split, index, during in log if during]
    # scored on validation episodes 4, 5 (after the 4 that give val/acc), never on a test episode
    assert grid_draws and {split for split, _ in grid_draws} == {"val"}
    assert {index for _, index in grid_draws} == {4, 5}
    assert any(split == "test" and not during for split, _, during in log)  # the spy did see the test loop

    loaded = fewshot.load(results["checkpoint"])
    assert loaded.settings is not None
    assert (
        loaded.settings.lr in (0.1, 0.01) and loaded.settings.decay in (0.0, 0.1) and loaded.settings.updates in (1, 2)
    )
    with open(tmp_path / "csv" / "metrics.csv") as f:
        logged = [row for row in csv.DictReader(f) if row.get("finetune/lr")]
    assert logged, "the chosen settings were not logged"
    last = logged[-1]
    assert float(last["finetune/lr"]) == pytest.approx(loaded.settings.lr)
    assert float(last["finetune/decay"]) == pytest.approx(loaded.settings.decay)
    assert float(last["finetune/updates"]) == loaded.settings.updates
    assert results["test"]["finetune"] == asdict(loaded.settings)  # and results.json records them


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
