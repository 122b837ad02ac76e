"""fewshot.reporting.trend: the slope of a run's late validations against CPU time."""

from __future__ import annotations

import pytest

from fewshot.reporting.trend import Trend, mean_trend, t_quantile_95, trend_text, validation_trend


def history(accs: list[float], cpu_step_s: float = 300.0) -> list[dict[str, float]]:
    """Validations every ``cpu_step_s`` CPU-seconds with the given accuracies (in [0, 1])."""
    return [{"acc": a, "cpu_s": cpu_step_s * (i + 1), "step": 100 * (i + 1)} for i, a in enumerate(accs)]


def test_a_straight_line_gives_its_slope_in_points_per_ten_cpu_minutes():
    # +1 point per validation, one validation per 5 CPU-minutes: +2 points per 10 minutes
    assert validation_trend(history([0.80, 0.81, 0.82, 0.83, 0.84, 0.85])) == Trend(
        pytest.approx(2.0), pytest.approx(0.0)
    )
    assert validation_trend(history([0.90] * 8)) == Trend(pytest.approx(0.0), pytest.approx(0.0))


def test_only_the_second_half_counts():
    # a steep rise then flat: the late half (the middle one included for an odd count) is flat
    assert validation_trend(history([0.2, 0.5, 0.7, 0.9, 0.9, 0.9, 0.9])).slope == pytest.approx(0.0)
    # flat then falling
    assert validation_trend(history([0.9, 0.9, 0.9, 0.9, 0.88, 0.86])).slope == pytest.approx(-4.0)


def test_least_squares_through_noise_with_a_t_interval():
    # late half at 20, 30, 40 CPU-minutes: 80, 83, 82 points -> slope 1 point per 10 minutes;
    # residuals -2/3, +4/3, -2/3: se = sqrt((8/3) / 1 / 2), 1 degree of freedom (t = 12.706)
    accs = [0.5, 0.6, 0.80, 0.83, 0.82]
    rows = [{"acc": a, "cpu_s": 600.0 * i} for i, a in enumerate(accs)]
    trend = validation_trend(rows)
    assert trend.slope == pytest.approx(1.0)
    assert trend.ci95 == pytest.approx(12.706 * (4 / 3) ** 0.5)


def test_t_quantiles():
    assert t_quantile_95(1) == 12.706 and t_quantile_95(30) == 2.042
    assert t_quantile_95(40) == pytest.approx(2.021, abs=0.003)
    assert t_quantile_95(120) == pytest.approx(1.980, abs=0.003)
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_95(0)


@pytest.mark.parametrize(
    "rows",
    [
        history([0.5, 0.6, 0.7, 0.8])[:4],  # two late validations
        [{"acc": 0.5, "step": 1}, {"acc": 0.6, "step": 2}, {"acc": 0.7, "step": 3}] * 2,  # no cpu_s
        [{"acc": a, "cpu_s": 60.0} for a in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)],  # one CPU time
        [{"acc": float("nan"), "cpu_s": 60.0 * i} for i in range(6)],
        [],
    ],
)
def test_no_trend_where_it_cannot_be_told(rows):
    assert validation_trend(rows) is None


def test_seeds_average_their_slopes_and_intervals():
    assert mean_trend([Trend(1.0, 0.5), None, Trend(2.0, 1.5)]) == Trend(1.5, 1.0)
    assert mean_trend([None, None]) is None
    assert trend_text(Trend(1.5, 1.0)) == "+1.5 ± 1.0/10 min"
    assert trend_text(Trend(-0.04, 0.2)) == "-0.0 ± 0.2/10 min"
    assert trend_text(None) == ""
