"""Lightning's EarlyStopping made resumable: a stopped run stays stopped, and a resume may raise the patience."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping


class PlateauStopping(EarlyStopping):
    """Stop once the monitored value has not improved for ``patience`` validations (``callbacks=plateau``).

    Lightning's EarlyStopping restores its counters from a checkpoint but stops only after the
    next validation, so a run the plateau had ended trained one more epoch when resumed; and
    it restores the checkpoint's patience over the configured one. Here a resumed run whose
    plateau was reached does not train again, and the run's configured patience applies (a
    deliberate change needs ``resume_allow_changes=[callbacks.early_stopping.patience]``).
    """

    def __init__(self, monitor: str, patience: int = 3, min_delta: float = 0.0, **kwargs: Any) -> None:
        if patience < 1:
            raise ValueError(
                f"callbacks.early_stopping.patience must be at least 1 validation, got {patience}; "
                "set e.g. callbacks.early_stopping.patience=10."
            )
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(
                f"callbacks.early_stopping.min_delta must be a non-negative number, got {min_delta}; "
                "set e.g. callbacks.early_stopping.min_delta=0.0."
            )
        super().__init__(monitor=monitor, patience=patience, min_delta=min_delta, **kwargs)

    @property
    def state_key(self) -> str:
        """Lightning's key for an EarlyStopping, so checkpoints written with either class load into both."""
        return super().state_key.replace(type(self).__qualname__, EarlyStopping.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the counters and the best score; keep the configured patience."""
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience

    @property
    def reached(self) -> bool:
        """Whether the validations so far end in ``patience`` without improvement (none yet: no)."""
        return self.wait_count > 0 and self.wait_count >= self.patience

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stay stopped when the restored run had reached its plateau; otherwise forget an earlier stop."""
        if self.reached:
            trainer.should_stop = True
        else:
            self.stopped_epoch = 0
