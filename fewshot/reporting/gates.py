"""The paper-style figure of Meta-LSTM gate values over the inner updates."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fewshot.io import save_figure_formats  # noqa: E402

GATE_TITLES = {"input": "input gate $i_t$", "forget": "forget gate $f_t$"}


def plot_gates(gates: dict, title: str = "") -> Figure:
    """Mean input and forget gate per learner layer over the inner steps (shaded: mean ± the spread
    across the layer's coordinates), from the ``gates`` the Meta-LSTM writes into ``results.json``
    (``{"layers": [...], "input": {"mean": [T][L], "std": [T][L]}, "forget": {...}}``).
    """
    layers = gates["layers"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    steps = list(range(1, int(gates["steps"]) + 1))
    colours = plt.get_cmap("tab10")
    for ax, gate in zip(axes, ("input", "forget")):
        mean, std = gates[gate]["mean"], gates[gate]["std"]
        for k, layer in enumerate(layers):
            m = [row[k] for row in mean]
            s = [row[k] for row in std]
            ax.plot(steps, m, marker="o", ms=3, color=colours(k % 10), label=layer)
            ax.fill_between(
                steps, [a - b for a, b in zip(m, s)], [a + b for a, b in zip(m, s)], color=colours(k % 10), alpha=0.12
            )
        ax.set_title(GATE_TITLES[gate])
        ax.set_xlabel("inner update t")
        ax.set_ylabel("mean gate value")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_yscale("log")
    axes[1].legend(ncol=3, fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def save_gate_figure(gates: dict, out_dir: str | Path, title: str = "") -> list[Path]:
    """Draw the gate figure and save it as PNG and PDF into ``out_dir``; return the paths."""
    return save_figure_formats(plot_gates(gates, title), out_dir, "gates", dpi=130)
