"""Paired comparison of two methods scored on the same test episodes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fewshot.evaluation.stats import mean_ci95
from fewshot.reporting.runs import RunRecord


class EpisodeMismatchError(ValueError):
    """Two runs were scored on different test episodes, so they cannot be paired."""


@dataclass(frozen=True)
class PairedDifference:
    """Mean per-episode accuracy difference ``a - b`` with its 95% CI and a two-sided p-value."""

    method_a: str
    method_b: str
    setting: str
    episodes: int
    mean: float
    ci95: float
    p_value: float

    @property
    def significant(self) -> bool:
        """Whether the 95% CI of the difference excludes zero."""
        return abs(self.mean) > self.ci95


def episode_accuracies(runs: Sequence[RunRecord]) -> tuple[tuple[int, ...], torch.Tensor, str | None]:
    """Per-episode accuracy of one method averaged over its runs (seeds), which must share
    their test episodes; returns (episode indices, accuracies, fingerprint)."""
    first = runs[0]
    for run in runs[1:]:
        check_same_episodes(first, run)
    acc = torch.tensor([run.episode_acc for run in runs], dtype=torch.float64).mean(0)
    return first.episode_index, acc, first.fingerprint


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


def normal_two_sided_p(z: float) -> float:
    """Two-sided p-value of a standard-normal statistic."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def paired_difference(runs_a: Sequence[RunRecord], runs_b: Sequence[RunRecord]) -> PairedDifference:
    """Per-episode difference of method a minus method b over their shared test episodes.

    Each side may hold several runs (seeds) of one method; their per-episode accuracies are
    averaged first. The CI is ``1.96 * std(d) / sqrt(n)`` of the differences ``d``; the
    p-value is the normal approximation of the paired t-test (n is hundreds of episodes).
    """
    check_same_episodes(runs_a[0], runs_b[0])
    _, acc_a, _ = episode_accuracies(runs_a)
    _, acc_b, _ = episode_accuracies(runs_b)
    diff = acc_a - acc_b
    mean, ci95 = mean_ci95(diff)
    std = diff.std(unbiased=True).item() if diff.numel() > 1 else float("nan")
    if std == 0.0:
        p_value = 1.0 if mean == 0.0 else 0.0
    else:
        p_value = normal_two_sided_p(mean / (std / math.sqrt(diff.numel())))
    return PairedDifference(
        method_a=runs_a[0].method,
        method_b=runs_b[0].method,
        setting=runs_a[0].setting,
        episodes=int(diff.numel()),
        mean=mean,
        ci95=ci95,
        p_value=p_value,
    )
