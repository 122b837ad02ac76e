"""Fixtures of the learned-optimizer tests: one thread, composed configs shrunk to seconds."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from fewshot.learned_optimizer import CONFIG_DIR

# Each composed run: a few steps on a few draws; MLP problems on tiny glyph images.
TINY = ["debug=tiny", "logger=csv", "problem.steps=4"]
TINY_IMAGES = ["problem.data.images_per_class=8", "problem.data.image_size=8"]


def compose_learned_optimizer(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose ``fewshot/learned_optimizer/conf/learn_to_learn.yaml`` with overrides, writing into ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name="learn_to_learn", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny tensors: one intra-op thread is as fast and immune to a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
