"""Summaries of a comparison: loss-curve statistics, the final-loss table (Markdown and JSON)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from fewshot.io import temporary_for
from fewshot.learned_optimizer.comparison import OptimizerResult

CURVE_STATS = ("mean", "std", "q25", "median", "q75")


def curve_stats(losses: Tensor) -> dict[str, Tensor]:
    """Per-step statistics over draws: ``losses [steps + 1, B]`` -> ``{stat: [steps + 1]}``."""
    q25, median, q75 = torch.quantile(losses.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=1)
    return {"mean": losses.mean(1), "std": losses.std(1), "q25": q25, "median": median, "q75": q75}


def final_row(result: OptimizerResult) -> dict[str, Any]:
    """One table row: the optimizer, its learning rate and statistics of its final losses."""
    stats = {k: float(v[0]) for k, v in curve_stats(result.losses[-1:]).items()}
    return {
        "optimizer": result.name,
        "lr": None if result.tuning is None else result.tuning.lr,
        "lr_at_grid_edge": None if result.tuning is None else result.tuning.at_grid_edge,
        "final_loss": stats,
        "mean_loss_over_steps": float(result.losses[1:].mean()),
        "n_draws": result.losses.shape[1],
        "steps": result.losses.shape[0] - 1,
        "lr_scores": None if result.tuning is None else {str(k): v for k, v in result.tuning.scores.items()},
    }


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The final-loss table in Markdown, one line per optimizer."""
    lines = [
        "| optimizer | learning rate | final loss, mean ± std | median [25%, 75%] |",
        "|---|---|---|---|",
    ]
    for row in rows:
        s = row["final_loss"]
        lr = "learned" if row["lr"] is None else f"{row['lr']:g}" + (" (grid edge)" if row["lr_at_grid_edge"] else "")
        lines.append(
            f"| {row['optimizer']} | {lr} | {s['mean']:.4g} ± {s['std']:.2g} "
            f"| {s['median']:.4g} [{s['q25']:.4g}, {s['q75']:.4g}] |"
        )
    return "\n".join(lines) + "\n"


def write_curves_csv(results: Sequence[OptimizerResult], path: str | Path) -> Path:
    """Per-step statistics of every optimizer as CSV: ``optimizer, step, mean, std, q25, median, q75``."""
    target = Path(path)
    with temporary_for(target) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["optimizer", "step", *CURVE_STATS])
        for result in results:
            stats = curve_stats(result.losses)
            for step in range(result.losses.shape[0]):
                writer.writerow([result.name, step, *(f"{float(stats[k][step]):.6g}" for k in CURVE_STATS)])
    return target


__all__ = ["CURVE_STATS", "curve_stats", "final_row", "markdown_table", "write_curves_csv"]
