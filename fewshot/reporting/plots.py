"""Report figures: validation accuracy against time (reference CPU minutes from a costs file, or
the measured ones), and test accuracy against shots.

There is no figure against training steps: a step is a different amount of work per method
(a batch of 32 images, a meta-batch of 32 tasks, one episode), which the reference minutes
(steps x that method's cost per step) put on one scale."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from fewshot.io import save_figure_atomic  # noqa: E402
from fewshot.reporting.costs import ReferenceCosts  # noqa: E402
from fewshot.reporting.display import DEFAULT_DISPLAY, MethodDisplay, split_variant  # noqa: E402
from fewshot.reporting.runs import RunRecord  # noqa: E402
from fewshot.reporting.table import setting_sort_key  # noqa: E402


def save_figure(fig: plt.Figure | None, path: Path) -> Path | None:
    """Write a figure as PNG and close it; None when there was nothing to draw (``fig`` is None)."""
    if fig is None:
        return None
    save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


# a variant ``M (v)`` is drawn in M's colour with the next of these styles (M itself: solid)
LINE_STYLES = ("-", "--", ":", "-.")


@dataclass(frozen=True)
class LineStyle:
    """How one method's lines look in every panel and figure of a report."""

    color: tuple[float, float, float]
    linestyle: str


def method_styles(methods: Sequence[str], display: MethodDisplay = DEFAULT_DISPLAY) -> dict[str, LineStyle]:
    """One look per method: its colour from the display's data (other methods the spare ones), and
    each variant ``M (v)`` in M's colour with its own line style, so variants read as their method's."""
    ordered = sorted(set(methods), key=display.sort_key)
    colour_of = display.colour_of(list(dict.fromkeys(split_variant(m)[0] for m in ordered)))
    styles = {}
    variants_drawn: dict[str, int] = {}  # per base method; the sort puts a method's variants after it
    for method in ordered:
        base, variant = split_variant(method)
        rank = 0
        if variant:
            rank = variants_drawn[base] = variants_drawn.get(base, 0) + 1
        styles[method] = LineStyle(colour_of[base], LINE_STYLES[rank % len(LINE_STYLES)])
    return styles


def row_major(items: Sequence[str], columns: int) -> list[str]:
    """``items`` reordered so that a legend, which fills its columns top to bottom, reads them
    left to right, row by row."""
    rows = math.ceil(len(items) / columns)
    grid = [list(items[r * columns : (r + 1) * columns]) for r in range(rows)]
    return [row[c] for c in range(columns) for row in grid if c < len(row)]


def add_figure_legend(
    fig: plt.Figure,
    handles: dict[str, Line2D],
    runs_per_method: dict[str, int],
    display: MethodDisplay = DEFAULT_DISPLAY,
) -> None:
    """One legend for all panels, below them, one entry per method in table order (with its number of
    seeds when more than one)."""
    ordered = sorted(handles, key=display.sort_key)
    rows = math.ceil(len(ordered) / (2 + 2 * len(fig.axes)))
    columns = math.ceil(len(ordered) / rows)  # rows as even as they can be
    ordered = row_major(ordered, columns)
    fig.legend(
        [handles[m] for m in ordered],
        [f"{m}, {runs_per_method[m]} seeds" if runs_per_method[m] > 1 else m for m in ordered],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=columns,
        fontsize=8,
        frameon=False,
    )


def plain_number(x: float, _position: int) -> str:
    """A tick label as a plain number (``0.5``, ``20``), not a power of ten."""
    return f"{x:g}"


def use_log_axis(ax: plt.Axes) -> None:
    """A log x-axis labelled with plain numbers; when fewer than two powers of ten fall inside the
    data (too few labels to read the axis by), the 2x and 5x ticks are labelled too."""
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(plain_number))
    low, high = ax.dataLim.intervalx
    if 0 < low and math.floor(math.log10(high)) - math.ceil(math.log10(low)) < 1:
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(FuncFormatter(plain_number))
    else:
        ax.xaxis.set_minor_formatter(NullFormatter())


@dataclass(frozen=True)
class Curve:
    """One method's validation accuracy (mean over its seeds) against time in minutes."""

    minutes: list[float]
    acc: list[float]  # percent
    ci95: list[float]  # percent, the mean of the seeds' intervals
    seeds: int


def mean_curve(runs: Sequence[RunRecord], minutes_of: Callable[[RunRecord, dict], float | None]) -> Curve | None:
    """The mean over seeds of the validations at the steps every seed validated, at the mean of
    ``minutes_of(run, validation)``; None when a seed has no validation or no time for one."""
    histories = [{int(p["step"]): p for p in run.val_history if p.get("step") is not None} for run in runs]
    common = sorted(set.intersection(*(set(h) for h in histories))) if histories else []
    minutes, acc, ci95 = [], [], []
    for step in common:
        times = [minutes_of(run, h[step]) for run, h in zip(runs, histories)]
        if any(t is None or not math.isfinite(t) or t <= 0 for t in times):
            return None
        minutes.append(statistics.fmean(times))
        acc.append(100 * statistics.fmean(h[step]["acc"] for h in histories))
        ci95.append(100 * statistics.fmean(h[step].get("ci95") or 0.0 for h in histories))
    return Curve(minutes, acc, ci95, len(runs)) if common else None


def measured_minutes(_run: RunRecord, validation: dict) -> float | None:
    """The CPU minutes a run had used at a validation (training and validations, its own machine)."""
    cpu = validation.get("cpu_s")
    return cpu / 60 if isinstance(cpu, (int, float)) else None


def reference_minutes(costs: ReferenceCosts) -> Callable[[RunRecord, dict], float | None]:
    """Minutes of the reference machine at a validation: steps x the run's row's cost per step."""

    def minutes(run: RunRecord, validation: dict) -> float | None:
        cost = costs.of(run.setting, run.method)
        return None if cost is None else validation["step"] * cost / 60

    return minutes


def without_costs(
    runs: Sequence[RunRecord], costs: ReferenceCosts, display: MethodDisplay = DEFAULT_DISPLAY
) -> list[str]:
    """``method (setting)`` of every row with a validation history but no reference cost."""
    rows = {(r.setting, r.method) for r in runs if r.val_history and costs.of(r.setting, r.method) is None}
    return [f"{method} ({setting})" for setting, method in sorted(rows, key=lambda k: (k[0], display.sort_key(k[1])))]


def method_curves(
    runs: Sequence[RunRecord], minutes_of: Callable[[RunRecord, dict], float | None]
) -> dict[tuple[str, str], Curve]:
    """Each (setting, method)'s mean curve over its seeds, where it has one."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.setting, run.method), []).append(run)
    curves = {key: mean_curve(group, minutes_of) for key, group in groups.items()}
    return {key: curve for key, curve in curves.items() if curve is not None}


def draw_curve(ax: plt.Axes, curve: Curve, style: LineStyle, muted: bool = False) -> Line2D:
    """One method's line (with its CI band), or a thin faint one as a reference (``muted``)."""
    alpha, width, marker = (0.3, 0.9, None) if muted else (1.0, 1.4, "o")
    (line,) = ax.plot(
        curve.minutes,
        curve.acc,
        marker=marker,
        markersize=3,
        linewidth=width,
        color=style.color,
        linestyle="-" if muted else style.linestyle,
        alpha=alpha,
    )
    if not muted:
        low = [a - c for a, c in zip(curve.acc, curve.ci95)]
        high = [a + c for a, c in zip(curve.acc, curve.ci95)]
        ax.fill_between(curve.minutes, low, high, color=style.color, alpha=0.12, linewidth=0)
    return line


def time_to_accuracy_figure(
    runs: Sequence[RunRecord], costs: ReferenceCosts | None = None, display: MethodDisplay = DEFAULT_DISPLAY
) -> plt.Figure | None:
    """Validation accuracy (mean over seeds, 95% CI band) against time on a log axis, one panel
    per setting and one line per method; named variants in a second row of panels, each over its
    method's line drawn faint. With ``costs``, time is reference CPU-minutes (steps x the row's
    cost per step on the reference machine, validations included: the same for every machine);
    without, the CPU-minutes each run measured on its own machine, and the title says so. None
    when no run has a curve."""
    minutes_of = measured_minutes if costs is None else reference_minutes(costs)
    curves = method_curves(runs, minutes_of)
    if not curves:
        return None
    in_table_order = sorted({r.setting: r for r in runs}.values(), key=setting_sort_key)
    settings = [r.setting for r in in_table_order if any(key[0] == r.setting for key in curves)]
    has_variants = any(split_variant(m)[1] for _, m in curves)
    styles = method_styles([m for _, m in curves], display)
    fig, axes = plt.subplots(
        2 if has_variants else 1, len(settings), figsize=(5.5 * len(settings), 4 * (1 + has_variants)), squeeze=False
    )
    handles: dict[str, Line2D] = {}
    seeds: dict[str, int] = {}
    for column, setting in enumerate(settings):
        in_panel = sorted((m for s, m in curves if s == setting), key=display.sort_key)
        for method in in_panel:
            variant = bool(split_variant(method)[1])
            curve = curves[(setting, method)]
            handles.setdefault(method, draw_curve(axes[int(variant)][column], curve, styles[method]))
            seeds[method] = max(seeds.get(method, 0), curve.seeds)
            base = split_variant(method)[0]
            if variant and (setting, base) in curves:
                draw_curve(axes[1][column], curves[(setting, base)], styles[base], muted=True)
        titles = [setting, f"{setting}: variants"]
        for row, ax in enumerate(axes[:, column]):
            ax.set(title=titles[row], ylabel="validation accuracy (%)")
            if not ax.lines:
                ax.text(0.5, 0.5, "no named variant", ha="center", va="center", transform=ax.transAxes, color="grey")
                ax.set_xticks([])
                continue
            ax.set_xlabel("reference CPU minutes (log scale)" if costs else "measured CPU minutes (log scale)")
            use_log_axis(ax)
            ax.grid(alpha=0.3)
    title = time_title(costs, without_costs(runs, costs, display) if costs else [])
    if has_variants:
        fig.subplots_adjust(hspace=0.35)
        title += "\nsecond row: the named variants, each over its method's line drawn faint"
    fig.suptitle(title, fontsize=9)
    add_figure_legend(fig, handles, seeds, display)
    return fig


def time_title(costs: ReferenceCosts | None, missing: Sequence[str]) -> str:
    """What the time axis of the time-to-accuracy figure measures, and what it leaves out."""
    if costs is None:
        return (
            "Time to accuracy in MEASURED CPU minutes (training + validations) of each run's own machine: "
            "no reference_costs.json, so machines of different speeds are mixed\n"
            "(python -m benchmarks.step_costs makes one; then time is steps x each method's cost per step)"
        )
    title = (
        f"Time to accuracy in reference CPU minutes: steps x each method's CPU-s per step (validations included) "
        f"on {costs.cpu}\n(from {costs.source.name}; the CPU time each run measured stays in its results.json)"
    )
    if missing:
        title += "\nnot drawn, no reference cost: " + ", ".join(missing)
    return title


Panel = tuple[str, int]  # (dataset, N-way) of the accuracy-against-shots figure


def shot_points(runs: Sequence[RunRecord]) -> dict[tuple[str, Panel], dict[int, tuple[float, float]]]:
    """Test accuracy and CI per (method, (dataset, N-way)) and number of shots, from each run's
    own shots and from ``eval.shots`` rescoring; averaged over runs that give the same point."""
    collected: dict[tuple[str, Panel], dict[int, list[tuple[float, float]]]] = {}
    for run in runs:
        key = (run.method, (run.dataset, run.n_way))
        points = collected.setdefault(key, {})
        scores = {run.n_shot: (run.acc, run.ci95)}
        scores.update({k: (float(v["acc"]), float(v["ci95"])) for k, v in run.shots.items()})
        for k, score in scores.items():
            points.setdefault(k, []).append(score)
    return {
        key: {k: (sum(a for a, _ in v) / len(v), sum(c for _, c in v) / len(v)) for k, v in points.items()}
        for key, points in collected.items()
    }


def accuracy_vs_shots_figure(runs: Sequence[RunRecord], display: MethodDisplay = DEFAULT_DISPLAY) -> plt.Figure | None:
    """Test accuracy (95% CI error bars) against K, one panel per dataset and N, one line per
    method; None when no method was scored at more than one K."""
    points = {key: p for key, p in shot_points(runs).items() if len(p) > 1}
    if not points:
        return None
    panels = sorted({panel for _, panel in points})
    styles = method_styles([method for method, _ in points], display)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    handles: dict[str, Line2D] = {}
    for ax, panel in zip(axes[0], panels):
        for method, _ in sorted((k for k in points if k[1] == panel), key=lambda k: display.sort_key(k[0])):
            shots = sorted(points[(method, panel)])
            acc = [100 * points[(method, panel)][k][0] for k in shots]
            ci = [100 * points[(method, panel)][k][1] for k in shots]
            style = styles[method]
            bars = ax.errorbar(shots, acc, yerr=ci, marker="o", capsize=3, color=style.color, linestyle=style.linestyle)
            handles.setdefault(method, bars.lines[0])
        ax.set(title=f"{panel[0]} {panel[1]}-way", xlabel="shots per class (K)", ylabel="test accuracy (%)")
        ax.set_xticks(sorted({k for (m, p), v in points.items() if p == panel for k in v}))
        ax.grid(alpha=0.3)
    add_figure_legend(fig, handles, {m: 1 for m in handles}, display)
    return fig
