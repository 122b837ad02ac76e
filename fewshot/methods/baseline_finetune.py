"""Baseline-finetune of Ravi & Larochelle (ICLR 2017, Table 1)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn

from fewshot.data.datamodule import EpisodicDataModule
from fewshot.data.episode import Episode
from fewshot.evaluation.stats import episode_accuracy
from fewshot.methods.base import OptimizerFactory, SchedulerFactory
from fewshot.methods.pretrained import PretrainedClassifier, inverse_time_lr


@dataclass(frozen=True)
class FinetuneSettings:
    """How a meta-test episode is fine-tuned: ``updates`` SGD steps on the whole support set,
    step ``t`` (0-based) with learning rate ``lr / (1 + t * decay)``."""

    lr: float
    decay: float
    updates: int

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.decay < 0 or self.updates < 1:
            raise ValueError(f"Fine-tuning needs lr > 0, decay >= 0 and updates >= 1, got {self}.")


@dataclass(frozen=True)
class FinetuneGrid:
    """The values searched on meta-validation episodes (every combination is scored).

    The defaults in ``conf/model/baseline_finetune.yaml`` are the grid of the final official
    config (twitter/meta-learning-lstm, ``config/baselines/``): six learning rates x seven
    decays, each with a fixed 15 updates (``updates = [15]``).
    """

    lr: Sequence[float]
    decay: Sequence[float]
    updates: Sequence[int]

    def __post_init__(self) -> None:
        # Hydra passes ListConfigs; keep plain, hashable tuples
        object.__setattr__(self, "lr", tuple(float(v) for v in self.lr))
        object.__setattr__(self, "decay", tuple(float(v) for v in self.decay))
        object.__setattr__(self, "updates", tuple(int(v) for v in self.updates))
        if not (self.lr and self.decay and self.updates):
            raise ValueError(f"Every list of the fine-tuning grid needs at least one value, got {self}.")
        for lr in self.lr:
            for decay in self.decay:
                for updates in self.updates:
                    FinetuneSettings(lr, decay, updates)

    @property
    def max_updates(self) -> int:
        """The longest fine-tuning in the grid; shorter ones are its prefixes."""
        return max(self.updates)


class BaselineFinetune(PretrainedClassifier):
    """Baseline-finetune: the pre-trained classifier, given a new N-way head and fine-tuned by
    SGD on each meta-test support set.

    Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017, Table 1 (a
    coarse version of the meta-learner). What follows the official code
    (twitter-research/meta-learning-lstm, ``model/baselines/pre-trained-SGD.lua``, release
    version):

    - The classification head is replaced by a new ``Linear(D, N)`` with Torch7's default
      initialisation, ``U(-1/sqrt(D), 1/sqrt(D))`` for weights and biases (PyTorch's
      ``nn.Linear`` default has the same distribution). The official code draws it once and
      starts every episode from that draw; here it is a pure function of ``head_seed``.
    - The whole network (convolutions, batch-norm affine parameters and head) is fine-tuned by
      plain SGD (no momentum, no weight decay) on the whole support set per step, with the
      learning-rate decay of Torch7's ``optim.sgd``: step ``t`` uses ``lr / (1 + t * decay)``.
    - Batch norm: batch statistics of the support set during the steps (training mode), whose
      running averages also move; the queries are then scored in evaluation mode with those
      running statistics (``network:evaluate()``). Each episode works on a fresh deep copy of
      the pre-trained network, so nothing carries over between episodes or grid points.
    - ``lr``, ``decay`` and ``updates`` are chosen by a grid search on meta-validation
      episodes, maximising mean query accuracy; ties go to the first in grid order (lr, then
      decay, then updates), as the official loop keeps the first best. The final official
      config fixes ``updates`` to 15 (a one-value list); a longer list also searches it.

    (An earlier version of that file stepped on one support image at a time, cycling through
    the support set ``updates`` times, and scored the queries in training mode.)

    The grid is scored on validation episodes ``val_episodes .. val_episodes + grid_episodes -
    1`` of the datamodule's validation sampler: never test episodes, and disjoint from the
    validation episodes that give ``val/acc``, which therefore stays an unbiased estimate. It is
    run at the start of every validation during fit, so every checkpoint holds weights together
    with the settings chosen for them (as extra state, restored by ``load_state_dict`` and so by
    ``fewshot.load``), and ``val/acc`` (which picks the best checkpoint) is the fine-tuned
    accuracy. Fine-tuning longer nests the shorter runs, so each (lr, decay) pair is fine-tuned
    once for ``max(updates)`` steps with the queries scored after each step listed in the grid.
    Under ``trainer.fast_dev_run=n`` (a smoke test) only the first ``n`` grid episodes are
    scored, with the first two learning rates and decays of the grid (see ``searched_grid``).

    Args:
        backbone: embedding network with an ``out_features`` attribute.
        optimizer: optimiser partial for the pre-training.
        n_train_classes: number of meta-training classes (filled in from the data).
        scheduler: optional scheduler partial for the pre-training.
        grid: values to search on validation episodes; None to use the fixed
            ``inner_lr``, ``inner_lr_decay``, ``eval_inner_steps``.
        grid_episodes: validation episodes the grid is scored on.
        inner_lr: fixed fine-tuning learning rate (only without a grid).
        inner_lr_decay: fixed learning-rate decay (only without a grid).
        eval_inner_steps: fixed number of SGD steps on each support set (only without a grid).
        head_seed: seed of the new head's initialisation.
    """

    display_name = "Baseline-finetune"

    def __init__(
        self,
        backbone: nn.Module,
        optimizer: OptimizerFactory,
        n_train_classes: int | None = None,
        scheduler: SchedulerFactory | None = None,
        grid: FinetuneGrid | None = None,
        grid_episodes: int = 100,
        inner_lr: float | None = None,
        inner_lr_decay: float | None = None,
        eval_inner_steps: int | None = None,
        head_seed: int = 0,
    ) -> None:
        super().__init__(backbone, optimizer, n_train_classes, scheduler)
        fixed = (inner_lr, inner_lr_decay, eval_inner_steps)
        if grid is None and None in fixed:
            raise ValueError(
                "BaselineFinetune needs a grid (model.grid) or all of model.inner_lr, "
                "model.inner_lr_decay and model.eval_inner_steps."
            )
        if grid is not None and any(v is not None for v in fixed):
            raise ValueError(
                "Give either a grid (model.grid) or fixed fine-tuning values (model.inner_lr, model.inner_lr_decay, "
                "model.eval_inner_steps), "
                "not both; set model.grid=null to use fixed values."
            )
        if grid_episodes < 1:
            raise ValueError(f"grid_episodes must be positive, got {grid_episodes}.")
        self.grid = grid
        self.grid_episodes = int(grid_episodes)
        self.head_seed = int(head_seed)
        self.settings: FinetuneSettings | None = None if grid is not None else FinetuneSettings(*fixed)
        # filled by each grid search: [lr, decay, updates] mean validation accuracy and the episodes
        self.grid_table: Tensor | None = None
        self.grid_episode_index: list[int] = []

    # -- adaptation -----------------------------------------------------------------------------
    def new_head(self, n_way: int) -> nn.Linear:
        """A fresh ``Linear(D, n_way)`` drawn from ``U(-1/sqrt(D), 1/sqrt(D))`` (Torch7's
        default), the same for every episode of a run."""
        reference = next(self.backbone.parameters())
        dim = self.backbone.out_features
        head = nn.Linear(dim, n_way).to(device=reference.device, dtype=reference.dtype)
        generator = torch.Generator().manual_seed(self.head_seed)
        bound = 1.0 / math.sqrt(dim)
        with torch.no_grad():
            for p in (head.weight, head.bias):
                p.copy_(torch.empty(p.shape, dtype=p.dtype).uniform_(-bound, bound, generator=generator))
        return head

    def fine_tune(
        self, support_images: Tensor, support_labels: Tensor, n_way: int, lr: float, decay: float, n_updates: int
    ) -> Iterator[nn.Module]:
        """Fine-tune a copy of the pre-trained network on one support set.

        Args:
            support_images: ``[N*K, C, H, W]`` normalised images.
            support_labels: ``[N*K]`` labels in ``0..N-1``.
            n_way: N.
            lr: learning rate of the first step.
            decay: learning-rate decay, step ``t`` uses ``lr / (1 + t * decay)``.
            n_updates: number of SGD steps, each on the whole support set.

        Yields:
            The network (backbone + new head, in evaluation mode) after each step; the same
            object, updated in place by the next step.
        """
        learner = nn.Sequential(copy.deepcopy(self.backbone), self.new_head(n_way))
        params = list(learner.parameters())
        for step in range(n_updates):
            learner.train()
            with torch.enable_grad():
                loss = F.cross_entropy(learner(support_images), support_labels)
                grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                for p, g in zip(params, grads):
                    p.sub_(g, alpha=inverse_time_lr(lr, decay, step))
            yield learner.eval()

    @staticmethod
    def query_logits(learner: nn.Module, query_images: Tensor) -> Tensor:
        """``[N*Q, C, H, W]`` -> ``[N*Q, N]`` logits of a fine-tuned network."""
        with torch.no_grad():
            return learner(query_images)

    def forward(self, episode: Episode) -> Tensor:
        """Fine-tune on each support set with the chosen settings; query logits ``[B, N*Q, N]``."""
        if self.settings is None:
            raise RuntimeError(
                "BaselineFinetune has no fine-tuning settings yet: they are chosen on validation "
                "episodes during fit, or by select_settings(datamodule)."
            )
        s = self.settings
        logits = []
        for e in episode.unbatch():
            *_, learner = self.fine_tune(e.support_images, e.support_labels, e.n_way, s.lr, s.decay, s.updates)
            logits.append(self.query_logits(learner, e.query_images))
        return torch.stack(logits)

    # -- choosing the settings on validation episodes -------------------------------------------
    def grid_accuracy(self, episodes: Iterable[Episode]) -> Tensor:
        """Mean query accuracy of every grid point over single, normalised episodes.

        Returns:
            ``[len(lr), len(decay), max(updates)]``: entry ``[i, j, u - 1]`` is the accuracy
            after ``u`` updates with ``lr[i]``, ``decay[j]``; NaN where ``u`` is not in the grid.
        """
        grid = self.searched_grid()
        scored = {u - 1 for u in grid.updates}
        total = torch.zeros(len(grid.lr), len(grid.decay), grid.max_updates, dtype=torch.float64)
        n = 0
        for e in episodes:
            n += 1
            for i, lr in enumerate(grid.lr):
                for j, decay in enumerate(grid.decay):
                    steps = self.fine_tune(e.support_images, e.support_labels, e.n_way, lr, decay, grid.max_updates)
                    for u, learner in enumerate(steps):
                        if u in scored:
                            logits = self.query_logits(learner, e.query_images)
                            total[i, j, u] += episode_accuracy(logits[None], e.query_labels[None], e.n_way).item()
        if n == 0:
            raise ValueError("The fine-tuning grid needs at least one validation episode.")
        table = total / n
        unscored = [u for u in range(grid.max_updates) if u not in scored]
        table[:, :, unscored] = float("nan")
        return table

    def best_settings(self, table: Tensor) -> FinetuneSettings:
        """The grid point of highest accuracy in ``table`` (see ``grid_accuracy``); ties go to
        the first in grid order."""
        grid = self.searched_grid()
        best, best_acc = None, -math.inf
        for i, lr in enumerate(grid.lr):
            for j, decay in enumerate(grid.decay):
                for updates in grid.updates:
                    acc = table[i, j, updates - 1].item()
                    if acc > best_acc:
                        best, best_acc = FinetuneSettings(lr, decay, updates), acc
        assert best is not None
        return best

    def searched_grid(self) -> FinetuneGrid:
        """The grid a search scores: ``grid``, or under ``trainer.fast_dev_run`` its corner of the first
        two learning rates and decays (the full grid fine-tunes 42 times per episode: minutes on a CPU)."""
        grid = self._require_grid()
        if not self._fast_dev_run():
            return grid
        return FinetuneGrid(lr=grid.lr[:2], decay=grid.decay[:2], updates=grid.updates)

    def _fast_dev_run(self) -> int:
        """``trainer.fast_dev_run`` as a number of batches (0 when off or without a trainer)."""
        return int(getattr(self._trainer, "fast_dev_run", False) or 0) if self._trainer is not None else 0

    def grid_episode_count(self) -> int:
        """How many episodes the grid is scored on: ``grid_episodes``, or at most ``n`` under
        ``trainer.fast_dev_run=n`` (``True`` counts as 1)."""
        fast_dev_run = self._fast_dev_run()
        return min(self.grid_episodes, fast_dev_run) if fast_dev_run else self.grid_episodes

    def select_settings(self, datamodule: EpisodicDataModule) -> FinetuneSettings:
        """Grid-search the fine-tuning settings on validation episodes of ``datamodule`` (never
        its test episodes, nor those that give ``val/acc``) and keep the best."""
        indices: list[int] = []

        def episodes() -> Iterator[Episode]:
            for index, episode in datamodule.tuning_episodes(self.grid_episode_count(), self.device):
                indices.append(index)
                yield episode

        self.grid_table = self.grid_accuracy(episodes())
        self.grid_episode_index = indices
        self.settings = self.best_settings(self.grid_table)
        return self.settings

    def _require_grid(self) -> FinetuneGrid:
        if self.grid is None:
            raise ValueError("This BaselineFinetune has fixed settings and no grid (model.grid is null).")
        return self.grid

    # -- Lightning hooks ------------------------------------------------------------------------
    def on_validation_epoch_start(self) -> None:
        """During fit, re-choose the settings for the current weights before validating."""
        searched = self.grid is not None and (self.trainer.state.fn == TrainerFn.FITTING or self.settings is None)
        if searched:
            self.select_settings(self._datamodule())
        self.log_settings(searched)

    def on_test_epoch_start(self) -> None:
        """Test with the settings restored from the checkpoint (chosen now if there are none)."""
        searched = self.settings is None
        if searched:
            self.select_settings(self._datamodule())
        self.log_settings(searched)

    def stage_metrics(self, stage: str) -> dict[str, Any]:
        """The fine-tuning settings the stage was scored with (``{"finetune": ...}``)."""
        return {} if self.settings is None else {"finetune": asdict(self.settings)}

    def log_settings(self, searched: bool) -> None:
        """Log the fine-tuning settings in use (``finetune/lr``, ``finetune/decay``,
        ``finetune/updates``) and, right after a search, its best accuracy (``finetune/grid_acc``)."""
        if self.settings is None:
            return
        values = {f"finetune/{k}": float(v) for k, v in asdict(self.settings).items()}
        if searched and self.grid_table is not None:
            values["finetune/grid_acc"] = float(self.grid_table.nan_to_num(-1.0).max())
        self.log_dict(values, sync_dist=False)

    def _datamodule(self) -> EpisodicDataModule:
        datamodule = self.trainer.datamodule
        if not isinstance(datamodule, EpisodicDataModule):
            raise RuntimeError(
                "BaselineFinetune chooses its fine-tuning settings on the validation episodes of an "
                "EpisodicDataModule; pass one to the Trainer (trainer.fit(method, datamodule=...))."
            )
        return datamodule

    # -- persistence: the chosen settings travel with the weights -------------------------------
    def get_extra_state(self) -> Any:
        """The chosen settings, saved in the state dict (and so in every checkpoint)."""
        return {"finetune_settings": None if self.settings is None else asdict(self.settings)}

    def set_extra_state(self, state: Any) -> None:
        """Restore the settings saved by ``get_extra_state``."""
        saved = state.get("finetune_settings") if isinstance(state, dict) else None
        self.settings = None if saved is None else FinetuneSettings(**saved)


__all__ = ["BaselineFinetune", "FinetuneGrid", "FinetuneSettings"]
