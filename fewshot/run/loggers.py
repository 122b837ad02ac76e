"""A CSV logger that keeps the rows of an interrupted run when the run is resumed.

Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so a resumed run lost
every row logged before the interruption. This one keeps them: it appends to the file, and on a
resume it first drops the rows logged after the checkpoint the run continues from (the resumed
run logs those steps again), so the file reads as one uninterrupted run.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from fewshot.io import temporary_for


class KeepingExperimentWriter(ExperimentWriter):
    """Lightning's CSV experiment writer, minus the deletion of an existing ``metrics.csv``."""

    def _check_log_dir_exists(self) -> None:
        """Continue an existing metrics file: adopt its columns instead of deleting it."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            header = next(csv.reader(file), [])
        self.metrics_keys = sorted(header)


def drop_rows_after(metrics_file: str | os.PathLike, epoch: int, step: int) -> int:
    """Remove the rows of ``metrics_file`` logged after (``epoch``, ``step``), rewriting it atomically;
    return how many. A row is kept when its epoch is below ``epoch``, or equal and its step at most ``step``.
    """
    if not os.path.isfile(metrics_file):
        return 0
    with open(metrics_file, newline="") as file:
        reader = csv.DictReader(file)
        fields, rows = reader.fieldnames or [], list(reader)
    kept = [row for row in rows if not logged_after(row, epoch, step)]
    if len(kept) == len(rows):
        return 0
    with temporary_for(Path(metrics_file)) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    return len(rows) - len(kept)


def logged_after(row: dict[str, str], epoch: int, step: int) -> bool:
    """Whether a CSV row (``epoch`` and ``step`` columns) was logged after (epoch, step)."""
    try:
        row_epoch = int(float(row.get("epoch") or -1))
        row_step = int(float(row.get("step") or -1))
    except ValueError:
        return False
    return row_epoch > epoch or (row_epoch == epoch and row_step > step)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSVLogger that appends to an existing ``metrics.csv`` instead of deleting it."""

    @property
    def experiment(self) -> Any:
        """The experiment writer (created on first use), one that keeps earlier rows."""
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = KeepingExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def continue_from(self, epoch: int, step: int) -> int:
        """Before a resume from a checkpoint at (epoch, step): drop the rows logged after it."""
        return drop_rows_after(os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE), epoch, step)
