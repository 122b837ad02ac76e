"""Which code trained which stretch of a run: the commit of its first start and of each resume."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class CommitPerSegment(pl.Callback):
    """Record ``{"commit", "from_step"}`` each time training starts or resumes, kept in checkpoints.

    A run cut and resumed later may continue under another checkout; ``results.json`` then says
    which commit trained from which step (``git_commits``), not only the last one (``git_commit``).
    Checkpoints written before this existed carry no segments: the list then starts at the resume.
    """

    def __init__(self, commit: str | None) -> None:
        self.commit = commit
        self.segments: list[dict[str, Any]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Open a segment at the step training starts from."""
        self.segments.append({"commit": self.commit, "from_step": int(trainer.global_step)})

    def state_dict(self) -> dict[str, Any]:
        """The segments so far (a resumed run keeps them)."""
        return {"segments": list(self.segments)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the segments of a checkpoint."""
        self.segments = list(state_dict.get("segments", []))
