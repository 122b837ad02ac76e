"""Report figures: validation accuracy over meta-training steps and CPU time, and test accuracy against shots."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from fewshot.io import save_figure_atomic  # noqa: E402
from fewshot.reporting.runs import RunRecord  # noqa: E402
from fewshot.reporting.table import method_sort_key, setting_sort_key, split_variant  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write a figure as PNG and close it."""
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


# Every known method keeps its colour whatever else a report holds (tab20 indices: even = dark,
# odd = the light tone of the same hue), and related methods share a hue.
METHOD_COLOURS = {
    "Baseline-NN": 0,
    "Baseline-finetune": 1,
    "ProtoNet": 2,
    "MatchingNet": 4,
    "MatchingNet-FCE": 5,
    "Meta-LSTM": 6,
    "MAML": 8,
    "FOMAML": 9,
    "Reptile": 10,
    "Siamese": 12,
    "Meta-SGD": 16,
    "FO-Meta-SGD": 17,
}
# other methods take the colours no known method has, then those of the known methods absent
SPARE_COLOURS = (18, 14, 3, 7, 11, 13, 15, 19)


def method_styles(methods: Sequence[str]) -> dict[str, LineStyle]:
    """One look per method: a fixed colour per known method (other methods the free ones), and
    each variant ``M (v)`` in M's colour with its own line style, so variants read as their method's."""
    ordered = sorted(set(methods), key=method_sort_key)
    bases = list(dict.fromkeys(split_variant(m)[0] for m in ordered))
    palette = matplotlib.colormaps["tab20"].colors
    absent = [index for base, index in METHOD_COLOURS.items() if base not in bases]
    free = iter(SPARE_COLOURS + tuple(absent))
    colour_of = {}
    for number, base in enumerate(bases):
        index = METHOD_COLOURS.get(base)
        colour_of[base] = palette[index if index is not None else next(free, number % len(palette))]
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


def legend_labels(runs_per_method: dict[str, int]) -> dict[str, str]:
    """A legend entry per method, saying how many seeds its lines are when more than one."""
    return {m: f"{m}, {n} seeds" if n > 1 else m for m, n in runs_per_method.items()}


def add_figure_legend(fig: plt.Figure, handles: dict[str, Line2D], runs_per_method: dict[str, int]) -> None:
    """One legend for all panels, below them, one entry per method in table order."""
    ordered = sorted(handles, key=method_sort_key)
    labels = legend_labels(runs_per_method)
    rows = math.ceil(len(ordered) / (2 + 2 * len(fig.axes)))
    columns = math.ceil(len(ordered) / rows)  # rows as even as they can be
    ordered = row_major(ordered, columns)
    fig.legend(
        [handles[m] for m in ordered],
        [labels[m] for m in ordered],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=columns,
        fontsize=8,
        frameon=False,
    )


def panel_order(runs: Sequence[RunRecord]) -> list[str]:
    """The settings of ``runs`` as the table's columns are ordered (dataset, N, then K)."""
    return [r.setting for r in sorted({r.setting: r for r in runs}.values(), key=setting_sort_key)]


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


def validation_curves_figure(
    runs: Sequence[RunRecord], x_key: str, x_label: str, x_scale: float, x_log: bool = False
) -> plt.Figure | None:
    """Validation accuracy (with its 95% CI band) against ``x_key`` of each validation point
    (times ``x_scale``, on a log axis with ``x_log``), one panel per setting and one line per run
    (a method's seeds share its look and its legend entry); None when no run has a validation
    history with that key."""
    with_history = [r for r in runs if r.val_history and all(p.get(x_key) is not None for p in r.val_history)]
    if not with_history:
        return None
    settings = panel_order(with_history)
    styles = method_styles([r.method for r in runs])
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    handles: dict[str, Line2D] = {}
    runs_per_method: dict[str, int] = {}
    for ax, setting in zip(axes[0], settings):
        panel = sorted(
            (r for r in with_history if r.setting == setting), key=lambda r: (method_sort_key(r.method), r.seed)
        )
        for run in panel:
            seeds = sum(r.method == run.method for r in panel)
            runs_per_method[run.method] = max(runs_per_method.get(run.method, 0), seeds)
            style = styles[run.method]
            xs = [x_scale * p[x_key] for p in run.val_history]
            acc = [100 * p["acc"] for p in run.val_history]
            ci = [100 * (p.get("ci95") or 0.0) for p in run.val_history]
            (line,) = ax.plot(
                xs, acc, marker="o", markersize=3, linewidth=1.2, color=style.color, linestyle=style.linestyle
            )
            handles.setdefault(run.method, line)
            ax.fill_between(
                xs,
                [a - c for a, c in zip(acc, ci)],
                [a + c for a, c in zip(acc, ci)],
                color=style.color,
                alpha=0.15 / seeds,
                linewidth=0,
            )
        ax.set(title=setting, xlabel=x_label, ylabel="validation accuracy (%)")
        if x_log:
            use_log_axis(ax)
        ax.grid(alpha=0.3)
    add_figure_legend(fig, handles, runs_per_method)
    return fig


def save_if_drawn(fig: plt.Figure | None, path: Path) -> Path | None:
    """Write ``fig`` to ``path`` (None when there was nothing to draw)."""
    return None if fig is None else save_figure(fig, path)


def plot_accuracy_vs_step(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """Validation accuracy against meta-training step (None when no run has a history)."""
    return save_if_drawn(validation_curves_figure(runs, "step", "meta-training step", 1.0), path)


def time_to_accuracy_figure(runs: Sequence[RunRecord]) -> plt.Figure | None:
    """Validation accuracy against the CPU minutes the run had used by then (training and
    validations), on a log axis: cheap methods plateau in minutes, others run to a cap of hours."""
    label = "CPU minutes used (training + validation, log scale)"
    return validation_curves_figure(runs, "cpu_s", label, 1 / 60, x_log=True)


def plot_accuracy_vs_cpu_time(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """The time-to-accuracy figure written to ``path`` (None when no run has CPU times in its
    validation history: runs without a CPU budget callback)."""
    return save_if_drawn(time_to_accuracy_figure(runs), path)


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


def accuracy_vs_shots_figure(runs: Sequence[RunRecord]) -> plt.Figure | None:
    """Test accuracy (95% CI error bars) against K, one panel per dataset and N, one line per
    method; None when no method was scored at more than one K."""
    points = {key: p for key, p in shot_points(runs).items() if len(p) > 1}
    if not points:
        return None
    panels = sorted({panel for _, panel in points})
    styles = method_styles([method for method, _ in points])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    handles: dict[str, Line2D] = {}
    for ax, panel in zip(axes[0], panels):
        for method, _ in sorted((k for k in points if k[1] == panel), key=lambda k: method_sort_key(k[0])):
            shots = sorted(points[(method, panel)])
            acc = [100 * points[(method, panel)][k][0] for k in shots]
            ci = [100 * points[(method, panel)][k][1] for k in shots]
            style = styles[method]
            bars = ax.errorbar(shots, acc, yerr=ci, marker="o", capsize=3, color=style.color, linestyle=style.linestyle)
            handles.setdefault(method, bars.lines[0])
        ax.set(title=f"{panel[0]} {panel[1]}-way", xlabel="shots per class (K)", ylabel="test accuracy (%)")
        ax.set_xticks(sorted({k for (m, p), v in points.items() if p == panel for k in v}))
        ax.grid(alpha=0.3)
    add_figure_legend(fig, handles, {m: 1 for m in handles})
    return fig


def plot_accuracy_vs_shots(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """The accuracy-against-shots figure written to ``path`` (None when there is nothing to draw)."""
    return save_if_drawn(accuracy_vs_shots_figure(runs), path)
