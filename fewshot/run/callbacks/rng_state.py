"""Random-number-generator state carried in checkpoints, so that a resumed run is exact."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


def capture_rng_states() -> dict[str, Any]:
    """The global RNG states of Python, NumPy, torch (and CUDA when present)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # tensors and plain numbers only, so that checkpoints load with torch.load(weights_only=True)
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the global RNGs to states from :func:`capture_rng_states`."""
    random.setstate(states["python"])
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class RngStateInCheckpoint(pl.Callback):
    """Saves the global RNG states with every checkpoint and restores them on resume.

    Lightning restores weights, optimizers, schedulers and loop counters, but not the global
    RNGs; a method that draws from them while training (dropout, random augmentation, pair
    sampling) would continue differently after a resume than without the interruption.
    Episodes themselves never depend on these states (each is a pure function of its index).
    """

    def state_dict(self) -> dict[str, Any]:
        """The RNG states at the moment the checkpoint is written."""
        return capture_rng_states()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from the RNG states of the checkpoint."""
        if state_dict:
            restore_rng_states(state_dict)
