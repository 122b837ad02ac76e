"""Meta-training an update rule by truncated backpropagation through the optimizee's training.

Per iteration, a fresh batch of optimizees is trained for ``unroll`` steps by the rule. The
unroll is cut into windows of ``truncation`` steps; after each window the meta-loss (the mean
optimizee loss over the window) is backpropagated into the rule's parameters, the meta-optimizer
steps, and the optimizee parameters and rule states are detached, so the next window's gradient
reaches no earlier window (Andrychowicz et al. 2016: unroll 100, truncation 20, Adam).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from fewshot.learned_optimizer.errors import ConfigError, check_positive
from fewshot.learned_optimizer.problem import TRAIN_STREAM, VALIDATION_STREAM, Optimizees, Problem, draw_seed
from fewshot.learned_optimizer.rules import detach_state
from fewshot.learned_optimizer.unroll import Trajectory, evaluate, unroll

log = logging.getLogger(__name__)

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
MetricsSink = Callable[[dict[str, float], int], None]


@dataclass
class MetaTrainingSummary:
    """How meta-training went: ``best_iteration`` is the iteration whose weights were kept (the best on
    validation, or the last) and ``history`` one ``{"iteration", "meta_loss", "final_loss"}`` row per logged iteration.
    """

    iterations: int
    best_iteration: int
    best_val_loss: float | None
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)


class MetaTrainer:
    """Truncated-BPTT meta-training of an update rule (an ``nn.Module``) on a problem.

    Each of ``iterations`` trains ``draws_per_iteration`` fresh optimizees for ``unroll`` steps, backpropagating
    every ``truncation`` steps; every ``val_every`` iterations (0: never) the rule is scored on ``n_val_draws``
    fixed validation draws and the best weights are kept.
    """

    def __init__(
        self,
        optimizer: OptimizerFactory,
        iterations: int = 300,
        unroll: int = 100,
        truncation: int = 20,
        draws_per_iteration: int = 128,
        clip_grad_norm: float | None = None,
        val_every: int = 0,
        n_val_draws: int = 32,
        log_every: int = 10,
    ) -> None:
        if iterations < 0:
            raise ConfigError(
                f"meta_train.iterations must be 0 or more, got {iterations}: "
                "set meta_train.iterations=0 to evaluate a loaded optimizer_net without meta-training."
            )
        check_positive("meta_train.unroll", unroll, "the paper unrolls 100 steps")
        check_positive("meta_train.truncation", truncation, "the paper truncates every 20 steps")
        if truncation > unroll:
            raise ConfigError(
                f"meta_train.truncation={truncation} is longer than meta_train.unroll={unroll}: a truncation "
                f"window lies inside the unroll; set meta_train.truncation to at most {unroll} "
                "(the paper: unroll 100, truncation 20)."
            )
        check_positive("meta_train.draws_per_iteration", draws_per_iteration)
        check_positive("meta_train.log_every", log_every)
        check_positive("meta_train.n_val_draws", n_val_draws)
        if clip_grad_norm is not None:
            check_positive("meta_train.clip_grad_norm", clip_grad_norm, "or null for no clipping")
        if val_every < 0:
            raise ConfigError(f"meta_train.val_every must be 0 (no validation) or more, got {val_every}.")
        self.optimizer = optimizer
        self.iterations, self.unroll, self.truncation = int(iterations), int(unroll), int(truncation)
        self.draws_per_iteration, self.clip_grad_norm = int(draws_per_iteration), clip_grad_norm
        self.val_every, self.n_val_draws, self.log_every = int(val_every), int(n_val_draws), int(log_every)

    def windows(self, rule: nn.Module, draws: Optimizees) -> Iterator[Trajectory]:
        """The truncation windows of one unroll of ``draws``, each a differentiable trajectory.

        Each window starts from the detached end of the previous one. The caller backpropagates
        each window's ``meta_loss`` (and steps the meta-optimizer) before asking for the next.
        """
        theta, state = draws.theta0, None
        for start in range(0, self.unroll, self.truncation):
            steps = min(self.truncation, self.unroll - start)
            window = unroll(rule, draws, theta, state, start, steps, differentiable=True)
            yield window
            theta, state = window.theta.detach(), detach_state(window.state)

    def train_iteration(self, rule: nn.Module, optimizer: torch.optim.Optimizer, draws: Optimizees) -> Tensor:
        """One meta-iteration on ``draws``, an optimizer step per window; the ``[unroll + 1, B]`` losses (detached)."""
        rows = []
        for window in self.windows(rule, draws):
            if not torch.isfinite(window.meta_loss):
                start = sum(r.shape[0] - 1 for r in rows)
                raise FloatingPointError(
                    f"The meta-loss of the window from step {start} is {window.meta_loss.item()}: the optimizees "
                    "diverged; lower meta_train.optimizer.lr or set meta_train.clip_grad_norm (e.g. 1.0)."
                )
            optimizer.zero_grad(set_to_none=True)
            window.meta_loss.backward()
            if self.clip_grad_norm is not None:
                nn.utils.clip_grad_norm_(rule.parameters(), self.clip_grad_norm)
            optimizer.step()
            rows.append(window.losses.detach())
        # consecutive windows share their boundary step
        return torch.cat([rows[0]] + [r[1:] for r in rows[1:]])

    def fit(
        self, rule: nn.Module, problem: Problem, seed: int, log_metrics: MetricsSink | None = None
    ) -> MetaTrainingSummary:
        """Meta-train ``rule`` in place on draws of ``problem`` from ``seed``; keep the best weights.
        ``log_metrics`` receives ``({"meta_train/loss": ..., ...}, iteration)``.
        """
        parameters = [p for p in rule.parameters() if p.requires_grad] if isinstance(rule, nn.Module) else []
        if self.iterations and not parameters:
            raise ConfigError(
                f"{type(rule).__name__} has no trainable parameters to meta-train: use a learned rule "
                "(optimizer_net=lstm) or set meta_train.iterations=0."
            )
        started = time.perf_counter()
        summary = MetaTrainingSummary(self.iterations, self.iterations, None, 0.0)
        if not self.iterations:
            return summary
        optimizer = self.optimizer(parameters)
        val_draws = problem.sample(self.n_val_draws, draw_seed(seed, VALIDATION_STREAM), self.unroll)
        best_state = None
        for iteration in range(1, self.iterations + 1):
            draws = problem.sample(self.draws_per_iteration, draw_seed(seed, TRAIN_STREAM, iteration), self.unroll)
            losses = self.train_iteration(rule, optimizer, draws)
            metrics = {"meta_train/loss": losses[1:].mean().item(), "meta_train/final_loss": losses[-1].mean().item()}
            if self.val_every and (iteration % self.val_every == 0 or iteration == self.iterations):
                val_loss = evaluate(rule, val_draws, self.unroll)[1:].mean().item()
                metrics["meta_val/loss"] = val_loss
                if summary.best_val_loss is None or val_loss < summary.best_val_loss:
                    summary.best_val_loss, summary.best_iteration = val_loss, iteration
                    best_state = copy.deepcopy(rule.state_dict())
            if "meta_val/loss" in metrics or iteration % self.log_every == 0 or iteration == self.iterations:
                summary.history.append({"iteration": iteration, **metrics})
                log.info("meta-iteration %d: %s", iteration, {k: round(v, 5) for k, v in metrics.items()})
                if log_metrics is not None:
                    log_metrics(metrics, iteration)
        if best_state is not None:
            rule.load_state_dict(best_state)
        summary.wall_s = round(time.perf_counter() - started, 2)
        return summary


__all__ = ["MetaTrainer", "MetaTrainingSummary"]
