"""Report figures: validation accuracy over meta-training steps and CPU time, and test accuracy against shots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first

from fewshot.io import save_figure_atomic  # noqa: E402
from fewshot.reporting.runs import RunRecord  # noqa: E402
from fewshot.reporting.table import method_sort_key  # noqa: E402


def save_figure(fig: plt.Figure, path: Path) -> Path:
    """Write a figure as PNG and close it."""
    save_figure_atomic(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def method_colors(methods: Sequence[str]) -> dict[str, str]:
    """One colour per method, the same in every panel and figure of a report."""
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    ordered = sorted(set(methods), key=method_sort_key)
    return {m: palette[i % len(palette)] for i, m in enumerate(ordered)}


def run_label(run: RunRecord, runs: Sequence[RunRecord]) -> str:
    """The legend entry of a run: its method, plus the seed when the method has several runs."""
    same = [r for r in runs if r.method == run.method and r.setting == run.setting]
    return f"{run.method} (seed {run.seed})" if len(same) > 1 else run.method


def plot_validation_curves(
    runs: Sequence[RunRecord], path: Path, x_key: str, x_label: str, x_scale: float
) -> Path | None:
    """Validation accuracy (with its 95% CI band) against ``x_key`` of each validation point
    (times ``x_scale``), one panel per setting and one line per run; None when no run has a
    validation history with that key."""
    with_history = [r for r in runs if r.val_history and all(p.get(x_key) is not None for p in r.val_history)]
    if not with_history:
        return None
    settings = sorted({r.setting for r in with_history})
    colors = method_colors([r.method for r in runs])
    fig, axes = plt.subplots(1, len(settings), figsize=(5.5 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for run in sorted((r for r in with_history if r.setting == setting), key=lambda r: method_sort_key(r.method)):
            xs = [x_scale * p[x_key] for p in run.val_history]
            acc = [100 * p["acc"] for p in run.val_history]
            ci = [100 * (p.get("ci95") or 0.0) for p in run.val_history]
            (line,) = ax.plot(
                xs, acc, marker="o", markersize=4, color=colors[run.method], label=run_label(run, with_history)
            )
            ax.fill_between(
                xs,
                [a - c for a, c in zip(acc, ci)],
                [a + c for a, c in zip(acc, ci)],
                color=line.get_color(),
                alpha=0.15,
            )
        ax.set(title=setting, xlabel=x_label, ylabel="validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_accuracy_vs_step(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """Validation accuracy against meta-training step (None when no run has a history)."""
    return plot_validation_curves(runs, path, "step", "meta-training step", 1.0)


def plot_accuracy_vs_cpu_time(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """Time to accuracy: validation accuracy against the CPU minutes the run had used by then
    (training and validations; runs without a CPU budget callback have no such points)."""
    return plot_validation_curves(runs, path, "cpu_s", "CPU minutes used (training + validation)", 1 / 60)


def shot_points(runs: Sequence[RunRecord]) -> dict[tuple[str, str], dict[int, tuple[float, float]]]:
    """Test accuracy and CI per (method, dataset N-way) and number of shots, from each run's own
    shots and from ``eval.shots`` rescoring; averaged over runs that give the same point."""
    collected: dict[tuple[str, str], dict[int, list[tuple[float, float]]]] = {}
    for run in runs:
        key = (run.method, f"{run.dataset} {run.n_way}-way")
        points = collected.setdefault(key, {})
        scores = {run.n_shot: (run.acc, run.ci95)}
        scores.update({k: (float(v["acc"]), float(v["ci95"])) for k, v in run.shots.items()})
        for k, score in scores.items():
            points.setdefault(k, []).append(score)
    return {
        key: {k: (sum(a for a, _ in v) / len(v), sum(c for _, c in v) / len(v)) for k, v in points.items()}
        for key, points in collected.items()
    }


def plot_accuracy_vs_shots(runs: Sequence[RunRecord], path: Path) -> Path | None:
    """Test accuracy (95% CI error bars) against K, one panel per dataset and N, one line per
    method; None when no method was scored at more than one K."""
    points = {key: p for key, p in shot_points(runs).items() if len(p) > 1}
    if not points:
        return None
    panels = sorted({panel for _, panel in points})
    colors = method_colors([method for method, _ in points])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for method, _ in sorted((k for k in points if k[1] == panel), key=lambda k: method_sort_key(k[0])):
            shots = sorted(points[(method, panel)])
            acc = [100 * points[(method, panel)][k][0] for k in shots]
            ci = [100 * points[(method, panel)][k][1] for k in shots]
            ax.errorbar(shots, acc, yerr=ci, marker="o", capsize=3, color=colors[method], label=method)
        ax.set(title=panel, xlabel="shots per class (K)", ylabel="test accuracy (%)")
        ax.set_xticks(sorted({k for (m, p), v in points.items() if p == panel for k in v}))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
