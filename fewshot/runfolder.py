"""Protect a run folder that already holds a run: checked by Hydra before it writes anything.

Hydra writes ``.hydra/`` (config, overrides) into the run folder before the task starts, so a
test-only run pointed at a trained run's folder (``hydra.run.dir=<run>``) replaced that run's
``.hydra`` before any of our code ran. :class:`ProtectExistingRuns` is a Hydra callback whose
``on_run_start`` runs earlier: it refuses such a test-only run, and a run trained from scratch in
a folder that holds another (their checkpoints and CSV rows would mix), and gives the config of
a run that continues one (``resume=true``, or ``ckpt_path`` into that run's folder) its own
``.hydra-resume-<n>`` folder so the interrupted run's ``.hydra`` stays as it was. This module
imports no torch (it runs before every run). Multirun jobs are not checked here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

# what a run leaves in its folder; inside the task .hydra is this run's own (Hydra wrote it)
RUN_MARKERS = ("results.json", "checkpoints")
HYDRA_SUBDIR = ".hydra"


class RunConfigError(ValueError):
    """A run key with a value the run cannot use; the message names the key, the value and the fix."""


def run_markers_in(folder: Path, markers: Sequence[str]) -> list[str]:
    """The ``markers`` of a run that ``folder`` holds."""
    return [name for name in markers if (folder / name).exists()]


def check_test_only_folder(output_dir: str | Path, markers: Sequence[str] = RUN_MARKERS) -> None:
    """Refuse a test-only run in a folder that already holds another run (issue 17, item 5)."""
    folder = Path(output_dir)
    if existing := run_markers_in(folder, markers):
        raise RunConfigError(
            f"The run folder {folder} already holds another run ({', '.join(existing)}); a test-only run "
            "(train=false) would replace its results. Give it its own folder: drop hydra.run.dir (the default "
            "is a new timestamped folder) and keep ckpt_path=<checkpoint>."
        )


def check_fresh_training_folder(output_dir: str | Path, markers: Sequence[str] = RUN_MARKERS) -> None:
    """Refuse to train a new run from scratch in a folder that already holds a run."""
    folder = Path(output_dir)
    if existing := run_markers_in(folder, markers):
        raise RunConfigError(
            f"The run folder {folder} already holds a run ({', '.join(existing)}); training a new one from "
            "scratch there would mix the two runs' checkpoints and logs. Continue that run with resume=true, "
            "give this one its own folder (drop hydra.run.dir: the default is a new timestamped folder), or "
            f"delete {folder} to start over."
        )


def free_subdir(folder: Path, stem: str) -> str:
    """``<stem>-1``, ``<stem>-2``, ...: the first that does not exist in ``folder``."""
    n = 1
    while (folder / f"{stem}-{n}").exists():
        n += 1
    return f"{stem}-{n}"


# set by Lightning's DDP launcher, torchrun and SLURM for each process of a multi-process run
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")


def another_process_of_the_run() -> bool:
    """Whether this process is not rank 0 of a multi-process run (its rank 0 started in the same folder)."""
    return any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES)


class ProtectExistingRuns(Callback):
    """Hydra callback (conf/hydra/default.yaml): nothing of an existing run is replaced."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before Hydra writes .hydra: refuse a test-only run, or a run trained from scratch, in
        another run's folder; point the .hydra of a run that continues one at a fresh folder."""
        if config.hydra.output_subdir is None or another_process_of_the_run():
            return  # Hydra writes no config here, or rank 0 made these checks for the whole run
        run_dir = Path(str(config.hydra.run.dir))
        trains = config.get("train", True)
        continues = config.get("resume", False) or bool(config.get("ckpt_path"))
        markers = (*RUN_MARKERS, HYDRA_SUBDIR)
        try:
            if not trains:
                check_test_only_folder(run_dir, markers)
            elif not continues:
                check_fresh_training_folder(run_dir, markers)
        except RunConfigError as err:
            # Hydra turns a callback's exception into a warning and goes on: exit instead
            raise SystemExit(f"Error: {err}") from err
        if trains and continues and config.hydra.output_subdir == HYDRA_SUBDIR and (run_dir / HYDRA_SUBDIR).exists():
            with read_write(config.hydra), open_dict(config.hydra):
                config.hydra.output_subdir = free_subdir(run_dir, f"{HYDRA_SUBDIR}-resume")
