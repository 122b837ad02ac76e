"""A callback that tells a test process when a run has reached a point, to send it a signal there."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl


class AnnounceAndSlowDown(pl.Callback):
    """Touch ``path`` once ``batches`` batches of ``stage`` ("train", "validation" or "test") have ended,
    then sleep ``delay`` seconds after every batch of any stage (time for the signal to arrive)."""

    def __init__(self, path: str, stage: str, batches: int, delay: float) -> None:
        self.path, self.stage, self.batches, self.delay = Path(path), stage, batches, delay
        self.seen = 0
        self.announced = False

    def _batch_end(self, stage: str) -> None:
        if stage == self.stage:
            self.seen += 1
        if not self.announced and self.seen >= self.batches:
            self.path.write_text("reached")
            self.announced = True
        if self.announced:
            time.sleep(self.delay)

    def on_train_batch_end(self, *args: Any) -> None:
        """Count a training batch."""
        self._batch_end("train")

    def on_validation_batch_end(self, *args: Any) -> None:
        """Count a validation batch."""
        self._batch_end("validation")

    def on_test_batch_end(self, *args: Any) -> None:
        """Count a test batch."""
        self._batch_end("test")
