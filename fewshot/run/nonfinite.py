"""What meta-training does with a NaN or infinite loss: stop with a clear message, or skip the update."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

NonFinitePolicyName = Literal["stop", "skip"]
NONFINITE_POLICIES: tuple[NonFinitePolicyName, ...] = ("stop", "skip")


class NonFiniteLossError(FloatingPointError):
    """Meta-training produced a NaN or infinite loss."""


@dataclass
class NonFiniteLossPolicy:
    """The run's ``nonfinite_loss`` setting and how many episodes it has skipped.

    ``mode="stop"`` raises :class:`NonFiniteLossError`; ``"skip"`` makes no update for that meta-batch
    and counts its episodes. Only the shared episodic training step can skip (``skippable``): the stop
    message suggests ``skip`` only then.
    """

    mode: NonFinitePolicyName = "stop"
    skippable: bool = True
    skipped: int = 0

    def should_skip(self, loss: Tensor, episodes: int) -> bool:
        """True (and counted) when ``loss`` is not finite and the mode is ``skip``."""
        if self.mode != "skip" or bool(torch.isfinite(loss).all()):
            return False
        self.skipped += episodes
        return True

    def check(self, loss: Tensor, step: int) -> None:
        """Stop with a clear message on a NaN/inf loss instead of training on garbage."""
        if bool(torch.isfinite(loss).all()):
            return
        raise NonFiniteLossError(
            f"Non-finite training loss ({loss.item()}) at step {step}; training stopped (the "
            "checkpoints saved so far are kept). Lower the learning rate (model.optimizer.lr), add gradient "
            "clipping (trainer.gradient_clip_val), or check the data normalisation"
            + (", or set nonfinite_loss=skip to skip such meta-batches." if self.skippable else ".")
        )


__all__ = ["NONFINITE_POLICIES", "NonFiniteLossError", "NonFiniteLossPolicy", "NonFinitePolicyName"]
