"""Checkpoints that carry their own composed config, and loading them back."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

CONFIG_KEY = "fewshot_config"


class StoreConfigInCheckpoint(pl.Callback):
    """Adds the resolved run config to every checkpoint so ``fewshot.load`` can rebuild it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Store the config next to the weights."""
        checkpoint[CONFIG_KEY] = self.config


def read_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, with a clear error when it is not one of ours."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"Checkpoint {ckpt_path} not found; pass the path of a .ckpt written by train.py.")
    try:
        checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ValueError(
            f"Cannot read checkpoint {ckpt_path}: {err}. The file is corrupt or not a checkpoint."
        ) from err
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(
            f"{ckpt_path} is not a fewshot checkpoint (no stored config); "
            "use a checkpoint written by `python train.py`."
        )
    return checkpoint


def checkpoint_config(ckpt_path: str | os.PathLike) -> DictConfig:
    """The composed config a checkpoint was trained with."""
    return OmegaConf.create(read_checkpoint(ckpt_path)[CONFIG_KEY])


def load(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """Rebuild a trained method from its checkpoint, ready for ``method(episode)`` in eval mode."""
    checkpoint = read_checkpoint(ckpt_path)
    config = OmegaConf.create(checkpoint[CONFIG_KEY])
    method = instantiate(config.model)
    missing, unexpected = method.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {ckpt_path} does not match the method {type(method).__name__} it names: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    return method.to(map_location).eval()
