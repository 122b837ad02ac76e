"""Scoring optimizers side by side: every one runs on exactly the same evaluation draws.

Hand-designed baselines get their learning rate from a grid, chosen on separate tuning draws
(the lowest mean final loss); the learned optimizers run as they are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from fewshot.learned_optimizer.errors import ConfigError, check_positive
from fewshot.learned_optimizer.problem import EVALUATION_STREAM, TUNING_STREAM, Optimizees, Problem, draw_seed
from fewshot.learned_optimizer.rules import UpdateRule
from fewshot.learned_optimizer.unroll import evaluate

log = logging.getLogger(__name__)

RuleFactory = Callable[..., UpdateRule]
"""A hand-designed rule with everything but ``lr`` bound, e.g. ``partial(Adam, betas=...)``."""


@dataclass(frozen=True)
class Baselines:
    """Hand-designed optimizers (name -> rule factory taking ``lr``) and the learning rates to tune them over."""

    rules: Mapping[str, RuleFactory] = field(default_factory=dict)
    lr_grid: Sequence[float] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_grid", tuple(float(lr) for lr in self.lr_grid))
        object.__setattr__(self, "rules", dict(self.rules))
        if self.rules and not self.lr_grid:
            raise ConfigError("baselines.lr_grid is empty: list the learning rates to tune, e.g. [1e-4, 1e-3, 1e-2].")
        for lr in self.lr_grid:
            check_positive("every entry of baselines.lr_grid", lr)


@dataclass(frozen=True)
class Tuning:
    """The learning-rate search of one baseline: the chosen ``lr`` and the mean final loss on the tuning
    draws of every rate tried (``inf`` where it diverged).
    """

    lr: float
    scores: dict[float, float]

    @property
    def at_grid_edge(self) -> bool:
        """Whether the chosen rate is the grid's smallest or largest (the grid may be too narrow)."""
        return len(self.scores) > 1 and self.lr in (min(self.scores), max(self.scores))


@dataclass(frozen=True)
class OptimizerResult:
    """One optimizer on the evaluation draws: ``losses [steps + 1, B]`` (row 0: the starting point) and,
    for a baseline, its learning-rate search.
    """

    name: str
    losses: Tensor
    tuning: Tuning | None = None


def tune_learning_rate(factory: RuleFactory, draws: Optimizees, steps: int, grid: Sequence[float]) -> Tuning:
    """The learning rate of ``grid`` with the lowest mean final loss of ``factory(lr=...)`` on ``draws``.

    Ties go to the smaller learning rate; a run that diverges (non-finite loss) scores ``inf``.
    """
    scores = {}
    for lr in grid:
        score = evaluate(factory(lr=lr), draws, steps)[-1].mean().item()
        scores[lr] = score if math.isfinite(score) else math.inf
    best = min(sorted(grid), key=lambda lr: scores[lr])
    return Tuning(lr=best, scores=scores)


class Comparison:
    """Run learned and tuned hand-designed optimizers on the same draws of a problem.

    ``seed`` seeds the tuning and evaluation draws apart from the run's seed, so that every run is scored
    on the same draws; the baselines' learning rates are chosen on ``n_tuning_draws`` separate draws.
    """

    def __init__(self, n_draws: int = 100, n_tuning_draws: int = 20, steps: int = 100, seed: int = 0) -> None:
        check_positive("evaluation.n_draws", n_draws, "the paper averages over 100 or more draws")
        check_positive("evaluation.n_tuning_draws", n_tuning_draws)
        check_positive("evaluation.steps", steps, "the paper runs 100 steps")
        self.n_draws, self.n_tuning_draws, self.steps, self.seed = int(n_draws), int(n_tuning_draws), int(steps), seed

    def run(self, problem: Problem, learned: Mapping[str, UpdateRule], baselines: Baselines) -> list[OptimizerResult]:
        """Every optimizer's losses on the evaluation draws: learned ones first, then the baselines."""
        draws = problem.sample(self.n_draws, draw_seed(self.seed, EVALUATION_STREAM), self.steps)
        results = [OptimizerResult(name, evaluate(rule, draws, self.steps)) for name, rule in learned.items()]
        if baselines.rules:
            tuning_draws = problem.sample(self.n_tuning_draws, draw_seed(self.seed, TUNING_STREAM), self.steps)
        for name, factory in baselines.rules.items():
            tuning = tune_learning_rate(factory, tuning_draws, self.steps, baselines.lr_grid)
            log.info("%s: lr %g (mean final loss by lr on tuning draws: %s)", name, tuning.lr, tuning.scores)
            if tuning.at_grid_edge:
                log.warning("%s: the chosen lr %g is at the edge of baselines.lr_grid; widen the grid", name, tuning.lr)
            results.append(OptimizerResult(name, evaluate(factory(lr=tuning.lr), draws, self.steps), tuning))
        return results


__all__ = ["Baselines", "Comparison", "OptimizerResult", "RuleFactory", "Tuning", "tune_learning_rate"]
