"""The loss-versus-step figure: every optimizer of a comparison on one log-scale plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from fewshot.io import save_figure_formats  # noqa: E402
from fewshot.learned_optimizer.comparison import OptimizerResult  # noqa: E402
from fewshot.learned_optimizer.report import curve_stats  # noqa: E402


def plot_curves(results: Sequence[OptimizerResult], title: str = "") -> Figure:
    """Mean loss over draws per step (line) with the 25-75% quantile band, log scale."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    colours = plt.get_cmap("tab10")
    for k, result in enumerate(results):
        stats = curve_stats(result.losses)
        steps = range(result.losses.shape[0])
        label = result.name if result.tuning is None else f"{result.name} (lr {result.tuning.lr:g})"
        width = 2.2 if result.tuning is None else 1.3
        ax.plot(steps, stats["mean"].numpy(), color=colours(k % 10), lw=width, label=label)
        ax.fill_between(steps, stats["q25"].numpy(), stats["q75"].numpy(), color=colours(k % 10), alpha=0.15, lw=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("optimizee loss (mean; band: 25-75%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def save_curves_figure(results: Sequence[OptimizerResult], out_dir: str | Path, title: str = "") -> list[Path]:
    """Draw :func:`plot_curves` and save it as ``loss_curves.png`` and ``.pdf`` into ``out_dir``; return the paths."""
    return save_figure_formats(plot_curves(results, title), out_dir, "loss_curves", dpi=110)


__all__ = ["plot_curves", "save_curves_figure"]
