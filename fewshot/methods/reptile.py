"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fewshot.data.episode import Episode
from fewshot.evaluation.stats import episode_accuracy
from fewshot.methods.base import EpisodicMethod, OptimizerFactory, SchedulerFactory
from fewshot.methods.choices import BatchNormModes, check_choice
from fewshot.methods.inner_loop import (
    CarriedOptimizerState,
    Params,
    batch_statistics,
    functional_logits,
    module_state,
    optimizer_adapt,
    resolve_inner_steps,
)

INNER_OPTIMIZERS = ("sgd", "adam")
INNER_OPTIMIZER_STATES = ("carried", "fresh")
# where a checkpoint keeps the carried inner optimizer state
INNER_STATE_KEY = "reptile_inner_optimizer_state"


def reptile_gradients(theta: Mapping[str, Tensor], adapted: Sequence[Mapping[str, Tensor]]) -> Params:
    """The Reptile direction as a gradient: ``theta - mean_i(phi_i)`` for every parameter.

    A gradient-descent step of size ``eps`` on it is Reptile's update
    ``theta <- theta + eps * mean_i(phi_i - theta)``.

    Args:
        theta: the initialisation, ``{name: tensor}``.
        adapted: the task-adapted weights ``phi_i``, one dict per task with the keys of ``theta``.
    """
    return {name: p.detach() - torch.stack([phi[name] for phi in adapted]).mean(0) for name, p in theta.items()}


class Reptile(EpisodicMethod):
    """Reptile: train a copy of the initialisation on each task with a few steps of SGD or
    Adam, then move the initialisation toward the adapted weights,
    ``theta <- theta + eps * mean_i(phi_i - theta)`` over the tasks of the meta-batch.

    Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", arXiv 2018.

    A task's training data is its support set (minibatches of ``inner_batch_size``, drawn
    without replacement and reshuffled after each pass, as in the paper's code); the query
    set of a training episode is only used to log ``train/loss`` and ``train/acc`` of the
    adapted weights. The outer step is taken by the configured meta optimizer on the
    gradient ``theta - mean_i(phi_i)`` (manual optimisation): ``SGD(lr=eps)`` is exactly the
    rule above, and ``outer_lr_final`` anneals ``eps`` linearly over the run as in the paper
    (``meta-step`` -> ``meta-step-final``). Evaluation fine-tunes a copy on the support set
    with ``eval_inner_steps`` steps of the same inner optimizer and learning rate, with a
    minibatch order seeded by the episode index, and predicts the queries.

    The inner optimizer's state (Adam's moments and step count): ``"carried"``, as in the
    paper's code, which restores only the model's weights between tasks, so the Adam state one
    task ends with is where the next task's starts, across meta-batches and meta-iterations;
    validation and test tasks start from the state training has reached and leave it as it was
    (it is saved in checkpoints). ``"fresh"``: a new optimizer state for every task, whose first
    Adam step moves every weight by the learning rate whatever the size of its gradient.

    Batch norm: as in the paper's code, which always runs batch norm in training mode, every
    call normalises with the statistics of its current batch; no running statistics are used
    or updated (the learner's buffers keep their initial values). The inner minibatches are
    such batches in both modes; ``eval_bn`` says how the queries of a validation or test
    episode are scored after adaptation:

    - ``"transductive"``: the task's whole query set in one batch (the paper's
      ``--transductive`` evaluation, its "+ Transduction" rows), so queries share statistics.
    - ``"support_plus_query"``: each query in its own batch of the whole support set plus that
      one query, its logits read from the last row (the paper code's default evaluation,
      ``Reptile._test_predictions`` of openai/supervised-reptile without ``--transductive``,
      the paper's plain "Reptile" rows). A query's prediction does not depend on the other
      queries, so the number of queries per class changes only the variance of the accuracy
      estimate, not its expectation (the paper's code scores 1 query per class per task).

    The queries of a training episode are not part of the Reptile update and are only logged
    (``train/loss``, ``train/acc``); they are always scored transductively (``train_bn``), which is cheap.

    Args:
        learner: the classifier, ending in an N-way head (``Conv4`` with ``n_classes = N``).
        optimizer: partial of the outer optimizer (``SGD(lr=eps)`` for plain Reptile).
        scheduler: optional partial of its scheduler (stepped once per meta-update); do not
            combine with ``outer_lr_final``.
        inner_optimizer: ``"sgd"`` or ``"adam"`` (the paper's choice, with ``beta1 = 0``).
        inner_lr: the inner optimizer's learning rate, in training and evaluation.
        inner_steps: inner steps per task in meta-training.
        inner_batch_size: inner minibatch size (None: the whole support set).
        eval_inner_steps: fine-tuning steps at validation/test (None: ``inner_steps``).
        eval_inner_batch_size: minibatch size at validation/test (None: whole support set).
        inner_betas: Adam's betas for ``inner_optimizer="adam"``.
        outer_lr_final: anneal the outer learning rate linearly from its configured value to
            this one over the run (None: constant).
        train_bn: how training queries pass through batch norm: only ``"transductive"``.
        eval_bn: how evaluation queries are batched through batch norm:
            ``"transductive"`` or ``"support_plus_query"`` (see above).
        inner_optimizer_state: ``"carried"`` from task to task or ``"fresh"`` per task (see above).
    """

    needs_fixed_n_way = True
    bn_modes = BatchNormModes(train=("transductive",), eval=("transductive", "support_plus_query"))

    def __init__(
        self,
        learner: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        inner_optimizer: str = "adam",
        inner_lr: float = 1e-3,
        inner_steps: int = 5,
        inner_batch_size: int | None = None,
        eval_inner_steps: int | None = None,
        eval_inner_batch_size: int | None = None,
        inner_betas: Sequence[float] = (0.0, 0.999),
        outer_lr_final: float | None = None,
        train_bn: str = "transductive",
        eval_bn: str = "transductive",
        inner_optimizer_state: str = "carried",
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.automatic_optimization = False
        check_choice("model.inner_optimizer", inner_optimizer, INNER_OPTIMIZERS)
        self.bn_modes.check(type(self).__name__, train_bn, eval_bn)
        check_choice("model.inner_optimizer_state", inner_optimizer_state, INNER_OPTIMIZER_STATES)
        eval_inner_steps = resolve_inner_steps(inner_steps, eval_inner_steps)
        for key, size in (("inner_batch_size", inner_batch_size), ("eval_inner_batch_size", eval_inner_batch_size)):
            if size is not None and size < 1:
                raise ValueError(f"model.{key} must be positive or null (the whole support set), got {size}.")
        if outer_lr_final is not None and scheduler is not None:
            raise ValueError("Set either model.scheduler or model.outer_lr_final (linear annealing), not both.")
        self.learner = learner
        self.inner_optimizer = inner_optimizer
        self.inner_lr = inner_lr
        self.inner_steps = inner_steps
        self.inner_batch_size = inner_batch_size
        self.eval_inner_steps = eval_inner_steps
        self.eval_inner_batch_size = eval_inner_batch_size
        self.inner_betas = (float(inner_betas[0]), float(inner_betas[1]))
        self.outer_lr_final = outer_lr_final
        self.train_bn = train_bn
        self.eval_bn = eval_bn
        self.carried_inner_state = CarriedOptimizerState() if inner_optimizer_state == "carried" else None

    def make_inner_optimizer(self, params: list[Tensor]) -> torch.optim.Optimizer:
        """A fresh inner optimizer over a task's weights."""
        if self.inner_optimizer == "adam":
            return torch.optim.Adam(params, lr=self.inner_lr, betas=self.inner_betas)
        return torch.optim.SGD(params, lr=self.inner_lr)

    def adapt_and_predict(
        self,
        support_images: Tensor,
        support_labels: Tensor,
        query_images: Tensor,
        steps: int,
        batch_size: int | None,
        generator: torch.Generator | None = None,
        transductive: bool = True,
        keep_state: bool = True,
    ) -> tuple[Params, Tensor]:
        """Train a copy of the learner on one support set and score the queries.

        Args:
            support_images: ``[N*K, C, H, W]``; ``support_labels``: ``[N*K]``.
            query_images: ``[N*Q, C, H, W]``.
            steps: inner optimizer steps; ``batch_size``: inner minibatch size (None: all).
            generator: random source of the minibatch order (None: the global one).
            transductive: score all queries in one batch (True), or each in a batch of the
                support set plus that query (False, see the class docstring).
            keep_state: whether the inner optimizer state this task ends with is carried to
                the next task (training) or dropped (evaluation); only with a carried state.

        Returns:
            The adapted weights ``phi`` (detached) and the query logits ``[N*Q, N]`` (no graph).
        """
        params, buffers = module_state(self.learner, detach=True)
        with batch_statistics(self.learner):
            adapted = optimizer_adapt(
                self.learner,
                params,
                buffers,
                support_images,
                support_labels,
                steps,
                self.make_inner_optimizer,
                batch_size,
                generator,
                carried=self.carried_inner_state,
                keep_state=keep_state,
            )
            with torch.no_grad():
                if transductive:
                    logits = functional_logits(self.learner, adapted, buffers, query_images)
                else:
                    logits = self.per_query_logits(adapted, buffers, support_images, query_images)
        return adapted, logits

    def per_query_logits(self, params: Params, buffers: Params, support_images: Tensor, query_images: Tensor) -> Tensor:
        """Non-transductive query logits ``[N*Q, N]``: each query classified in a batch of the
        whole support set plus that query, batch norm on that batch's statistics."""
        rows = [
            functional_logits(self.learner, params, buffers, torch.cat([support_images, query[None]]))[-1]
            for query in query_images
        ]
        return torch.stack(rows)

    def adapt_tasks(self, episode: Episode, meta_train: bool) -> tuple[list[Params], Tensor]:
        """Adapt to every task of the meta-batch (a plain loop).

        Meta-training uses the training settings and the global random state; evaluation uses
        the evaluation settings and a minibatch order seeded by each episode's index, so that
        its scores depend only on the weights and the episode, and scores the queries as
        ``eval_bn`` says (training queries: always transductively).

        Returns:
            One adapted weight dict per task and the query logits ``[B, N*Q, N]``.
        """
        self.check_head_matches_way(getattr(self.learner, "out_features", None), episode.n_way)
        steps = self.inner_steps if meta_train else self.eval_inner_steps
        batch_size = self.inner_batch_size if meta_train else self.eval_inner_batch_size
        transductive = meta_train or self.eval_bn == "transductive"
        adapted, logits = [], []
        for b, (support, labels, query) in enumerate(
            zip(episode.support_images, episode.support_labels, episode.query_images)
        ):
            generator = None if meta_train else torch.Generator().manual_seed(int(episode.index[b]))
            phi, task_logits = self.adapt_and_predict(
                support, labels, query, steps, batch_size, generator, transductive, keep_state=meta_train
            )
            adapted.append(phi)
            logits.append(task_logits)
        stacked = torch.stack(logits)
        self.check_head_matches_way(stacked.shape[-1], episode.n_way)
        return adapted, stacked

    def forward(self, episode: Episode) -> Tensor:
        """Fine-tune a copy on each support set and return the query logits ``[B, N*Q, N]``."""
        return self.adapt_tasks(episode, meta_train=self.training)[1]

    def training_step(self, episode: Episode, batch_idx: int) -> Tensor:
        """One Reptile meta-update from a meta-batch of tasks (manual optimisation)."""
        adapted, logits = self.adapt_tasks(episode, meta_train=True)
        loss = F.cross_entropy(logits.flatten(0, 1), episode.query_labels.flatten())
        self.check_finite(loss)
        optimizer = self.optimizers()
        optimizer.zero_grad()
        theta = {name: p for name, p in self.learner.named_parameters() if p.requires_grad}
        for name, grad in reptile_gradients(theta, adapted).items():
            theta[name].grad = grad
        optimizer.step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        acc = episode_accuracy(logits, episode.query_labels, episode.n_way).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=episode.batch_size)
        self.log("train/acc", acc, prog_bar=True, batch_size=episode.batch_size)
        return loss

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Also keep the carried inner optimizer state, so a resumed or tested run starts from it."""
        super().on_save_checkpoint(checkpoint)
        if self.carried_inner_state is not None:
            checkpoint[INNER_STATE_KEY] = self.carried_inner_state.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Restore the carried inner optimizer state (fresh when the checkpoint has none)."""
        super().on_load_checkpoint(checkpoint)
        if self.carried_inner_state is not None:
            self.carried_inner_state.load_state_dict(checkpoint.get(INNER_STATE_KEY))

    def configure_optimizers(self):
        """The outer optimizer, with the linear annealing of ``outer_lr_final`` if set."""
        configured = super().configure_optimizers()
        if self.outer_lr_final is None:
            return configured
        total = self.trainer.estimated_stepping_batches
        if not math.isfinite(total):
            raise ValueError("model.outer_lr_final needs a finite run: set trainer.max_epochs or trainer.max_steps.")
        start = configured.param_groups[0]["lr"]
        if start <= 0:
            raise ValueError(f"model.outer_lr_final needs a positive model.optimizer.lr, got {start}.")
        schedule = partial(linear_factor, end=self.outer_lr_final / start, total=max(1, int(total)))
        return {"optimizer": configured, "lr_scheduler": torch.optim.lr_scheduler.LambdaLR(configured, schedule)}


def linear_factor(step: int, end: float, total: int) -> float:
    """Multiplier of the initial learning rate at ``step``: 1 at step 0, ``end`` at ``total``."""
    done = min(step / total, 1.0)
    return (1 - done) + done * end


__all__ = ["Reptile", "linear_factor", "reptile_gradients"]
