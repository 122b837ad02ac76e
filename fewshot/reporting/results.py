"""The results file every run writes, and its printed table."""

from __future__ import annotations

import math
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from fewshot.evaluation.stats import mean_ci95
from fewshot.io import write_json_atomic

RESULTS_FILE = "results.json"
PREFIX_EPISODES = (100, 250, 600)


def git(folder: str | os.PathLike | None, *args: str) -> str | None:
    """The output of a git command run in ``folder``, or None when git fails (no repository)."""
    try:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout


def git_commit(cwd: str | os.PathLike | None = None) -> str | None:
    """The checked-out commit (with ``-dirty`` when there are local changes), or None."""
    commit = git(cwd, "rev-parse", "HEAD")
    dirty = git(cwd, "status", "--porcelain", "--untracked-files=no")
    if commit is None or dirty is None:
        return None
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def hardware() -> dict[str, Any]:
    """What the run ran on."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def accuracy_at_prefixes(episode_acc: list[float], sizes: tuple[int, ...] = PREFIX_EPISODES) -> dict[str, list[float]]:
    """Mean and 95% CI over the first 100, 250 and 600 episodes (the official protocol)."""
    return {str(n): list(mean_ci95(episode_acc[:n])) for n in sizes if len(episode_acc) >= n}


def write_results(path: str | os.PathLike, results: dict[str, Any]) -> Path:
    """Write the results as strict JSON atomically (a NaN, e.g. the CI of one episode, as null); return its path."""
    return write_json_atomic(path, results, fsync=True, default=str)


def run_title(results: dict[str, Any]) -> str:
    """``method dataset N-way K-shot`` of a results dict, for figure titles."""
    return f"{results['method']} {results['dataset']} {results['n_way']}-way {results['n_shot']}-shot"


def format_accuracy(acc: float, ci95: float) -> str:
    """``acc ± ci`` in percent; ``± n/a`` where one episode gives no interval."""
    interval = "n/a" if math.isnan(ci95) else f"{100 * ci95:.2f}"
    return f"{100 * acc:.2f} ± {interval}"


STAGE_TITLES = {
    "test": "Test accuracy (95% CI over fixed test episodes)",
    "val": "Validation accuracy (95% CI over fixed validation episodes)",
}


def print_results(rows: list[dict[str, Any]], stage: str = "test") -> None:
    """Print a table of one row per results dict, of its ``stage`` (``test`` or ``val``) scores."""
    table = Table(title=STAGE_TITLES[stage])
    for column in ("method", "dataset", "N-way", "K-shot", "episodes", f"{stage} acc %"):
        table.add_column(column, justify="right" if column != "method" else "left")
    for r in rows:
        scores = r[stage]
        table.add_row(
            r["method"],
            r["dataset"],
            str(r["n_way"]),
            str(r["n_shot"]),
            str(scores["episodes"]),
            format_accuracy(scores["acc"], scores["ci95"]),
        )
    Console().print(table)
