"""Finished runs as records: what the report command reads from each ``results.json``."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewshot.reporting.checks import results_problems
from fewshot.reporting.results import RESULTS_FILE
from fewshot.reporting.walk import files_below

log = logging.getLogger(__name__)


class NoRunsError(FileNotFoundError):
    """A report was asked for folders that hold no finished runs."""


class BadResultsError(ValueError):
    """A results file that cannot be read as a finished run."""


@dataclass(frozen=True)
class RunRecord:
    """One finished run: its method, setting, test accuracy and per-episode accuracies."""

    path: Path
    method: str
    dataset: str
    n_way: int
    n_shot: int
    seed: int
    acc: float
    ci95: float
    episodes: int
    fingerprint: str | None
    episode_index: tuple[int, ...]
    episode_acc: tuple[float, ...]
    val_history: tuple[dict[str, float], ...] = ()
    shots: dict[int, dict[str, Any]] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    gates: dict[str, Any] | None = None
    # which weights were tested: "best" (on validation) or "last" (the final weights); results
    # files written before the run key existed tested the best
    test_checkpoint: str = "best"
    # the CPU speed probe's measurements (fewshot.run.callbacks.speed_probe); None for runs made before it existed
    speed_probe: dict[str, Any] | None = None
    # ``platform.platform()`` where the run trained (kernel build included: it tells hosts apart)
    platform: str | None = None

    @property
    def setting(self) -> str:
        """``dataset N-way K-shot``: the column a run belongs to in the comparison table."""
        return f"{self.dataset} {self.n_way}-way {self.n_shot}-shot"

    @property
    def speed_ms(self) -> float | None:
        """The median of the run's CPU speed probes in milliseconds (higher: slower), or None."""
        median = (self.speed_probe or {}).get("median_ms")
        return float(median) if isinstance(median, (int, float)) else None

    @property
    def run_dir(self) -> Path:
        """The run's folder."""
        return self.path.parent


def find_results(paths: list[Path]) -> list[Path]:
    """Every ``results.json`` in or below ``paths`` (symlinked run folders followed, each file
    once), sorted; a clear error when there is none."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise NoRunsError(f"{', '.join(map(str, missing))} does not exist; pass a run or multirun folder of train.py.")
    by_real: dict[str, Path] = {}
    for path in paths:
        for found_file in [path] if path.is_file() else files_below(path, RESULTS_FILE):
            by_real.setdefault(os.path.realpath(found_file), found_file)
    found = sorted(by_real.values())
    if not found:
        raise NoRunsError(
            f"No {RESULTS_FILE} under {', '.join(map(str, paths))}: these folders hold no finished runs. "
            "Pass the folder that train.py printed (logs/<task>/runs/<time> or a multirun folder)."
        )
    return found


def load_results(path: Path) -> dict[str, Any]:
    """The JSON object of a results file, or a one-line BadResultsError (unreadable, cut, not an object)."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:  # JSONDecodeError is a ValueError
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise BadResultsError(f"Cannot read {path}: {detail}. Delete it or rerun that job.") from err
    if not isinstance(results, dict):
        raise BadResultsError(
            f"{path} holds a JSON {type(results).__name__}, not the object train.py writes; delete it or rerun "
            "that job."
        )
    return results


def read_run(path: Path) -> RunRecord | None:
    """The run of one results file; None when the run did not test (train-only runs)."""
    results = load_results(path)
    test = results.get("test")
    if not test:
        return None
    problems = results_problems(results)
    if problems:
        raise BadResultsError(
            f"{path} does not add up: {'; '.join(problems[:5])}. It was edited, cut, or written by a run that "
            "went wrong; rerun that job (or remove the file from the report)."
        )
    try:
        return RunRecord(
            path=Path(path),
            method=str(results["method"]),
            dataset=str(results["dataset"]),
            n_way=int(results["n_way"]),
            n_shot=int(results["n_shot"]),
            seed=int(results.get("seed", 0)),
            acc=float(test["acc"]),
            ci95=float("nan") if test["ci95"] is None else float(test["ci95"]),  # null: one episode
            episodes=int(test["episodes"]),
            fingerprint=test.get("fingerprint"),
            episode_index=tuple(int(i) for i in test.get("episode_index", range(len(test["episode_acc"])))),
            episode_acc=tuple(float(a) for a in test["episode_acc"]),
            val_history=tuple(results.get("val_history") or ()),
            shots={int(k): v for k, v in (test.get("shots") or {}).items()},
            train=dict(results.get("train") or {}),
            gates=test.get("gates") or (results.get("val") or {}).get("gates"),
            test_checkpoint=str(results.get("test_checkpoint", "best")),
            speed_probe=(results.get("hardware") or {}).get("speed_probe"),
            platform=(results.get("hardware") or {}).get("platform"),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise BadResultsError(
            f"{path} is not a complete results file of train.py (missing or bad {err}); rerun that job."
        ) from err


def single_episode_note(runs: list[RunRecord]) -> str:
    """A note naming the runs tested on one episode, whose 95% CI does not exist (``""`` when none)."""
    single = sorted({f"{r.method} ({r.setting})" for r in runs if r.episodes == 1})
    if not single:
        return ""
    return (
        f"\nNo 95% CI for {', '.join(single)}: tested on 1 episode, and a confidence interval needs at least 2 "
        "(ci95 is null in the results; the table shows n/a). Test on more episodes (data.test_episodes).\n"
    )


def load_runs(paths: list[Path]) -> list[RunRecord]:
    """Every tested run in or below ``paths`` (a clear error when there is none)."""
    runs = [run for run in (read_run(p) for p in find_results(paths)) if run is not None]
    if not runs:
        raise NoRunsError(
            f"The results under {', '.join(map(str, paths))} have no test scores (runs with test=false: "
            "training or validation only); run with test=true to compare methods."
        )
    return runs
