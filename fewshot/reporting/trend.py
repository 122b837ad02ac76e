"""Whether a run's validation accuracy was still rising when it stopped: the slope of its
late validations against CPU time, with a 95% confidence interval."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fewshot.evaluation.stats import Z_95

# the slope is in accuracy points per this many CPU-seconds of training (10 CPU-minutes)
TREND_CPU_S = 600.0
# fewer late validations than this give no slope (two points leave no residual to judge it by)
MIN_LATE_VALIDATIONS = 3
# two-sided 95% quantiles of Student's t for 1..30 degrees of freedom
T_95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


@dataclass(frozen=True)
class Trend:
    """A least-squares slope (accuracy points per 10 CPU-minutes) and its 95% CI half-width."""

    slope: float
    ci95: float


def t_quantile_95(dof: int) -> float:
    """The two-sided 95% quantile of Student's t (beyond 30 degrees of freedom, the normal one
    corrected by the first Cornish-Fisher term, within 0.003 of the exact value)."""
    if dof < 1:
        raise ValueError(f"Student's t needs at least 1 degree of freedom, got {dof}.")
    if dof <= len(T_95):
        return T_95[dof - 1]
    return Z_95 + (Z_95**3 + Z_95) / (4 * dof)


def validation_trend(history: Sequence[Mapping[str, float]]) -> Trend | None:
    """The least-squares slope of validation accuracy (points) against training CPU time, per
    10 CPU-minutes, over the second half of the run's validations, with its 95% CI.

    None when it cannot be told: fewer than ``MIN_LATE_VALIDATIONS`` late validations, or
    validations without a finite ``cpu_s`` (results written before it was recorded), or all at
    the same CPU time.
    """
    late = history[len(history) // 2 :]  # the middle one included when the count is odd
    if len(late) < MIN_LATE_VALIDATIONS:
        return None
    points = [(v.get("cpu_s"), v.get("acc")) for v in late]
    if not all(isinstance(x, (int, float)) and isinstance(y, (int, float)) for x, y in points):
        return None
    xs = [float(x) / TREND_CPU_S for x, _ in points]
    ys = [100.0 * float(y) for _, y in points]
    if not all(math.isfinite(v) for v in xs + ys) or min(xs) == max(xs):
        return None
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread
    residuals = sum((y - mean_y - slope * (x - mean_x)) ** 2 for x, y in zip(xs, ys))
    dof = len(xs) - 2
    return Trend(slope, t_quantile_95(dof) * math.sqrt(residuals / dof / spread))


def mean_trend(trends: Sequence[Trend | None]) -> Trend | None:
    """The mean slope and mean CI over the runs that have a trend (training seeds of one cell)."""
    known = [t for t in trends if t is not None]
    if not known:
        return None
    return Trend(statistics.fmean(t.slope for t in known), statistics.fmean(t.ci95 for t in known))


def trend_text(trend: Trend | None) -> str:
    """``+0.8 ± 0.3/10 min``, or empty without a trend."""
    return "" if trend is None else f"{trend.slope:+.1f} ± {trend.ci95:.1f}/10 min"
