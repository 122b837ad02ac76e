"""A training budget in CPU time, fair between runs that share a busy machine."""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import pytorch_lightning as pl

log = logging.getLogger(__name__)


class CpuTimeBudget(pl.Callback):
    """Stop training once the process has used ``minutes`` of CPU time.

    Unlike ``trainer.max_time`` (wall clock), CPU time does not shrink when other jobs share
    the cores, so runs launched side by side get the same compute. With one torch thread it
    equals the single core's busy time. Lightning validates once more when training is
    stopped this way, so a best-on-validation checkpoint always exists. The time used is
    saved in checkpoints, so a resumed run continues the same budget.
    """

    def __init__(self, minutes: float | None = None) -> None:
        if minutes is not None and not (math.isfinite(minutes) and minutes > 0):
            raise ValueError(
                f"callbacks.cpu_budget.minutes must be positive and finite (minutes of CPU time, or null for no "
                f"budget), got {minutes}; set e.g. callbacks.cpu_budget.minutes=60."
            )
        self.minutes = minutes
        self.used_s = 0.0
        self.spent = False  # whether this budget stopped training
        self._since: float | None = None

    @property
    def budget_s(self) -> float | None:
        """The budget in seconds (None when unlimited)."""
        return None if self.minutes is None else 60.0 * self.minutes

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the CPU time restored from a checkpoint (a resume with nothing left to train reports it)."""
        pl_module.train_cpu_s = self.used_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start counting; a resumed run whose budget is already spent stays stopped."""
        self._since = time.process_time()
        if self.budget_s is not None and self.used_s >= self.budget_s:
            log.info("CPU budget of %g min was spent before this resume; not training further.", self.minutes)
            trainer.should_stop = True
            self.spent = True

    def _tick(self) -> None:
        now = time.process_time()
        if self._since is not None:
            self.used_s += now - self._since
        self._since = now

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        """Signal the trainer to stop when the budget is spent."""
        self._tick()
        if self.budget_s is not None and self.used_s >= self.budget_s and not trainer.should_stop:
            log.info("CPU budget of %g min spent after %d steps; stopping.", self.minutes, trainer.global_step)
            trainer.should_stop = True
            self.spent = True

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Show the CPU time used so far to the method (its validation history records it)."""
        if not trainer.sanity_checking:
            self._tick()
            pl_module.train_cpu_s = self.used_s

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Record the CPU time of the run on the module (for the results file)."""
        self._tick()
        pl_module.train_cpu_s = self.used_s

    def state_dict(self) -> dict[str, float]:
        """The CPU time used so far (resumed runs continue the same budget)."""
        self._tick()
        return {"used_s": self.used_s}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        """Restore the CPU time used before the checkpoint."""
        self.used_s = float(state_dict.get("used_s", 0.0))
