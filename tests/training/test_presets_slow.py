"""Every experiment preset runs end to end for a few steps (``pytest -m slow``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fewshot.run.training import train
from tests.conftest import compose_config
from tests.data.fakes import make_mini_imagenet
from tests.helpers import omniglot_root
from tests.training.test_configs import EXPERIMENTS

FEW_STEPS = [
    "trainer=cpu",
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.max_steps=2",
    "+trainer.limit_val_batches=2",
    "+trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "data.eval_batch_size=1",
]


def data_overrides(experiment: str, tmp_path: Path) -> list[str]:
    """Point the preset at real Omniglot or at a generated Mini-ImageNet of the real layout."""
    if experiment.startswith("omniglot/"):
        if omniglot_root() is None:
            pytest.skip("real Omniglot data not found")
        return [f"data.source.root={omniglot_root()}"]
    if experiment.startswith("miniimagenet/"):
        # 30 training classes (ProtoNet trains 30-way) and 30 images per class, enough for every
        # preset's episodes (at most 15 shots + 15 queries per class)
        root = make_mini_imagenet(tmp_path / "mini", classes=(30, 6, 6), images=30, sizes=((84, 84),))
        return [f"data.source.root={root}", "data.source.cache=false"]
    return []


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_preset_trains_and_tests_for_a_few_steps(experiment, tmp_path):
    overrides = [f"experiment={experiment}", *FEW_STEPS, *data_overrides(experiment, tmp_path)]
    if "finetune" in experiment:
        # a 2 x 2 corner of the grid: the preset's 6 x 7 grid of 15-update fine-tunings takes
        # minutes per episode on a CPU (the grid search itself is tested in tests/methods)
        overrides += [
            "trainer.check_val_every_n_epoch=1",
            "model.grid_episodes=2",
            "model.grid.lr=[0.5,0.01]",
            "model.grid.decay=[1.0,0.0]",
        ]
    results = train(compose_config(list(dict.fromkeys(overrides)), tmp_path / "run"))
    assert results["test"]["episodes"] >= 1
    assert 0.0 <= results["test"]["acc"] <= 1.0
