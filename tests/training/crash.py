"""A callback that kills training after a given step, to test resuming."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class TrainingKilled(RuntimeError):
    """Raised by :class:`CrashAfterStep` to simulate a run dying mid-training."""


class CrashAfterStep(pl.Callback):
    """Raise once the trainer's global step reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """Die at the chosen step."""
        if trainer.global_step >= self.step:
            raise TrainingKilled(f"killed after step {trainer.global_step}")
