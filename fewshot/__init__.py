"""fewshot: few-shot meta-learning experiments (Meta-Learner LSTM and peers) on Lightning + Hydra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    import pytorch_lightning as pl


def load(ckpt_path: str, map_location: Any = "cpu") -> pl.LightningModule:
    """Rebuild a trained method from a checkpoint written by ``train.py`` (eval mode)."""
    from fewshot.run.checkpoint import load as load_checkpoint

    return load_checkpoint(ckpt_path, map_location)
