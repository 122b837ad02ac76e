"""Paired comparison of two methods scored on the same test episodes, over the episodes and,
where both methods have several training seeds, over the seeds too.

The episode interval is the paired one: per-episode differences of the seed-averaged accuracies,
``1.96 * std / sqrt(episodes)``. It says how much other test episodes would move the difference,
not how much another training seed would. Where both sides have at least two seeds, the seed
interval is Welch's t-interval of the difference of their seeds' mean accuracies: every seed of
one method against every seed of the other (the difference of the two seed means, with Welch's
standard error), not seed k against seed k, since seed k of two methods are unrelated trainings
(other models, other batches) and a pairing by seed number would tie the result to those labels.
Welch's degrees of freedom are rounded down (a wider interval). A difference is significant
when it is outside both intervals.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewshot.evaluation.stats import mean_ci95
from fewshot.reporting.runs import RunRecord
from fewshot.reporting.trend import t_quantile_95


class EpisodeMismatchError(ValueError):
    """Two runs were scored on different test episodes, so they cannot be paired."""


@dataclass(frozen=True)
class SeedInterval:
    """Welch's 95% t-interval of the difference of two methods' seed means."""

    ci95: float
    dof: int


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-episode accuracy difference ``a - b`` with its 95% CI over the test episodes and
    a two-sided p-value; with several seeds on both sides, also its 95% CI over the seeds."""

    method_a: str
    method_b: str
    setting: str
    episodes: int
    mean: float
    ci95: float
    p_value: float
    seeds_a: int = 1
    seeds_b: int = 1
    seed_interval: SeedInterval | None = None

    @property
    def significant(self) -> bool:
        """Whether the difference is outside its 95% CI over episodes and, with several seeds on
        both sides, outside its 95% CI over seeds too."""
        beyond_seeds = self.seed_interval is None or abs(self.mean) > self.seed_interval.ci95
        return abs(self.mean) > self.ci95 and beyond_seeds


def episode_accuracies(runs: Sequence[RunRecord]) -> torch.Tensor:
    """Per-episode accuracy of one method averaged over its runs (seeds), which must share their test episodes."""
    for run in runs[1:]:
        check_same_episodes(runs[0], run)
    return torch.tensor([run.episode_acc for run in runs], dtype=torch.float64).mean(0)


def check_same_episodes(a: RunRecord, b: RunRecord) -> None:
    """Refuse, with the reason and the fix, to pair runs whose test episodes differ."""
    problem = None
    if a.fingerprint and b.fingerprint and a.fingerprint != b.fingerprint:
        problem = f"test-episode fingerprints differ ({a.fingerprint[:12]}... vs {b.fingerprint[:12]}...)"
    elif (a.n_way, a.n_shot) != (b.n_way, b.n_shot) or a.dataset != b.dataset:
        problem = f"settings differ ({a.setting} vs {b.setting})"
    elif a.episode_index != b.episode_index:
        problem = f"they scored different episodes ({a.episodes} vs {b.episodes} test episodes)"
    if problem:
        raise EpisodeMismatchError(
            f"Cannot pair {a.method} ({a.run_dir}) with {b.method} ({b.run_dir}): {problem}. "
            "A paired test needs both methods scored on the same test episodes: use the same data config, "
            "data.eval_seed, data.n_query and data.test_episodes for both."
        )


def welch_interval(acc_a: Sequence[float], acc_b: Sequence[float]) -> SeedInterval | None:
    """Welch's 95% t-interval of ``mean(acc_a) - mean(acc_b)`` (one accuracy per training seed);
    None unless both sides have at least two seeds. Degrees of freedom rounded down."""
    n_a, n_b = len(acc_a), len(acc_b)
    if n_a < 2 or n_b < 2:
        return None
    var_a = statistics.variance(acc_a) / n_a
    var_b = statistics.variance(acc_b) / n_b
    total = var_a + var_b
    if total == 0.0:  # identical seeds on both sides: no spread to widen the interval by
        return SeedInterval(0.0, n_a + n_b - 2)
    dof = max(1, math.floor(total**2 / (var_a**2 / (n_a - 1) + var_b**2 / (n_b - 1))))
    return SeedInterval(t_quantile_95(dof) * math.sqrt(total), dof)


def paired_difference(runs_a: Sequence[RunRecord], runs_b: Sequence[RunRecord]) -> PairedDifference:
    """Per-episode difference of method a minus method b over their shared test episodes (each side's seeds
    averaged first), with the intervals the module docstring describes; the p-value is the normal
    approximation of the paired t-test (n is hundreds of episodes).
    """
    check_same_episodes(runs_a[0], runs_b[0])
    diff = episode_accuracies(runs_a) - episode_accuracies(runs_b)
    mean, ci95 = mean_ci95(diff)
    std = diff.std(unbiased=True).item() if diff.numel() > 1 else float("nan")
    if std == 0.0:
        p_value = 1.0 if mean == 0.0 else 0.0
    else:
        p_value = math.erfc(abs(mean / (std / math.sqrt(diff.numel()))) / math.sqrt(2.0))  # two-sided, normal
    return PairedDifference(
        method_a=runs_a[0].method,
        method_b=runs_b[0].method,
        setting=runs_a[0].setting,
        episodes=int(diff.numel()),
        mean=mean,
        ci95=ci95,
        p_value=p_value,
        seeds_a=len(runs_a),
        seeds_b=len(runs_b),
        seed_interval=welch_interval([r.acc for r in runs_a], [r.acc for r in runs_b]),
    )
