"""Shared fixtures: composed configs shrunk for fast CPU runs, synthetic class caches."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fewshot.data.classes import ClassImages
from fewshot.run.resolvers import register_resolvers

register_resolvers()

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = str(PROJECT_ROOT / "conf")

# tests never talk to a W&B server
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("FEWSHOT_PROJECT_ROOT", str(PROJECT_ROOT))


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``conf/train.yaml`` with overrides, writing outputs to ``output_dir``; as
    ``@hydra.main`` hands it to the task: Hydra's node in HydraConfig (where ``task_name``
    finds the chosen experiment), not in the config."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def tiny_config(tmp_path: Path):
    """Factory for a tiny CPU config (tiny embedded data, no loggers) in ``tmp_path``."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(["debug=tiny", "trainer=cpu", "logger=none", *overrides], tmp_path)

    return make


def random_classes(
    prefix: str, n_classes: int, n_images: int, size: int = 8, channels: int = 1, seed: int = 0
) -> ClassImages:
    """Random uint8 classes named ``<prefix>000`` .. for sampler tests."""
    g = torch.Generator().manual_seed(seed)
    return ClassImages.from_mapping(
        {
            f"{prefix}{i:03d}": torch.randint(0, 256, (n_images, channels, size, size), generator=g, dtype=torch.uint8)
            for i in range(n_classes)
        }
    )
