"""Baseline-finetune of Ravi & Larochelle (``model=baseline_finetune``,
``fewshot.methods.baseline_finetune``): fine-tuning on the support set, with its grid search on
validation episodes."""

from __future__ import annotations

import csv
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fewshot
from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.episode import Episode
from fewshot.evaluation.stats import episode_accuracy
from fewshot.methods.baseline_finetune import BaselineFinetune, FinetuneGrid, FinetuneSettings
from fewshot.models.conv4 import Conv4
from fewshot.reporting.results import RESULTS_FILE
from fewshot.run.training import train
from tests.conftest import compose_config
from tests.methods.test_pretrained import Flat, batched, random_episode, single_episode

TINY_GRID = [
    "model.grid.lr=[0.1,0.01]",
    "model.grid.decay=[0.0,0.1]",
    "model.grid.updates=[1,2]",
    "model.grid_episodes=2",
]


class TinyLinear(nn.Module):
    """A one-layer embedding small enough to check SGD steps by hand."""

    out_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def test_fine_tuning_is_plain_sgd_on_the_whole_network_with_learning_rate_decay():
    torch.manual_seed(0)
    method = BaselineFinetune(
        TinyLinear(), torch.optim.SGD, inner_lr=0.5, inner_lr_decay=1.0, eval_inner_steps=2, head_seed=3
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
    method = BaselineFinetune(Conv4(1, 8, 16), torch.optim.SGD, inner_lr=0.1, inner_lr_decay=0.0, eval_inner_steps=3)
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
                    backbone, torch.optim.SGD, inner_lr=lr, inner_lr_decay=decay, eval_inner_steps=k
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
            fixed = BaselineFinetune(backbone, torch.optim.SGD, inner_lr=lr, inner_lr_decay=decay, eval_inner_steps=4)
            logits = fixed.eval()(batched(e))
            assert table[i, j, 3].item() == episode_accuracy(logits, e.query_labels[None], 3).item()
    assert method.best_settings(table).updates == 4


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
        BaselineFinetune(Flat(), torch.optim.SGD, inner_lr=0.1)
    with pytest.raises(ValueError, match="not both"):
        BaselineFinetune(Flat(), torch.optim.SGD, grid=FinetuneGrid([0.1], [0.0], [1]), inner_lr=0.1)
    with pytest.raises(ValueError, match="updates >= 1"):
        FinetuneGrid([0.1], [0.0], [0])


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
