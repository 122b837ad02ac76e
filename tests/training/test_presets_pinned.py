"""Every paper preset pinned: the values that define each experiment, with their source.

A preset that drifts from its source (a default changed underneath it, a copy edited) fails
here. Each row is ``dotted config key: (expected value, source)``; the source names the file of
the official code or the paper section the value comes from, or "ours" for a deliberate
deviation listed in docs/reproduce.md ("Deviations").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from tests.conftest import PROJECT_ROOT, compose_config

RAVI_1SHOT = "twitter/meta-learning-lstm config/lstm/train-imagenet-1shot.lua"
RAVI_5SHOT = "twitter/meta-learning-lstm config/lstm/train-imagenet-5shot.lua"
RAVI_LEARNER = "twitter/meta-learning-lstm model/lstm/meta-learner-lstm.lua"
RAVI_PAPER = "Ravi & Larochelle 2017, section 4"

META_LSTM_MINI = {
    "data.image_size": (84, RAVI_PAPER),
    "data.mean": (None, "twitter/meta-learning-lstm: pixels / 255 only"),
    "data.std": (None, "twitter/meta-learning-lstm: pixels / 255 only"),
    "data.n_way": (5, RAVI_PAPER),
    "data.n_query": (15, RAVI_PAPER),
    "data.test_episodes": (600, RAVI_PAPER),
    "data.val_episodes": (100, RAVI_1SHOT + " nValidationEpisode"),
    "data.train_episodes": (1000, RAVI_1SHOT + " printPer (validation every 1,000 episodes)"),
    "data.meta_batch_size": (1, RAVI_LEARNER),
    "model.learner.hidden": (32, RAVI_PAPER),
    "model.learner.bn_eps": (0.001, "twitter/meta-learning-lstm model/lstm-classifier.lua"),
    "model.hidden_size": (20, RAVI_PAPER),
    "model.preprocess_p": (10.0, RAVI_PAPER),
    "model.grad_scale": ("official", RAVI_LEARNER),
    "model.grad_clip_norm": (0.25, RAVI_1SHOT + " maxGradNorm"),
    "model.optimizer._target_": ("torch.optim.Adam", RAVI_1SHOT + " optimMethod"),
    "model.optimizer.lr": (0.001, RAVI_1SHOT + " learningRate"),
    "model.train_bn": ("batch", RAVI_PAPER),
    "model.eval_bn": ("support", RAVI_PAPER),
    "test_checkpoint": ("last", "twitter/meta-learning-lstm config/lstm/test-lstm.lua (a saved final snapshot)"),
}

PINNED: dict[str, dict[str, tuple[Any, str]]] = {
    "miniimagenet/meta_lstm_5w1s": {
        **META_LSTM_MINI,
        "data.n_shot": (1, RAVI_PAPER),
        "model.n_steps": (12, RAVI_1SHOT + " nEpochs[1]"),
        "model.learner.bn_momentum": (0.9, RAVI_1SHOT + " BN_momentum"),
        "trainer.max_epochs": (75, RAVI_1SHOT + " nEpisode = 75000"),
    },
    "miniimagenet/meta_lstm_5w5s": {
        **META_LSTM_MINI,
        "data.n_shot": (5, RAVI_PAPER),
        "model.n_steps": (8, RAVI_5SHOT + " nEpochs[5]"),
        "model.learner.bn_momentum": (0.95, RAVI_5SHOT + " BN_momentum"),
        "trainer.max_epochs": (50, RAVI_5SHOT + " nEpisode = 50000"),
    },
}

CONF = PROJECT_ROOT / "conf" / "experiment"
PAPER_PRESETS = sorted(
    str(p.relative_to(CONF).with_suffix("")) for d in ("miniimagenet", "omniglot") for p in (CONF / d).glob("*.yaml")
)


@pytest.mark.parametrize("preset", sorted(PINNED))
def test_preset_runs_its_sources_values(preset: str, tmp_path: Path):
    cfg = compose_config([f"experiment={preset}"], tmp_path)
    drifted = [
        f"{key} = {OmegaConf.select(cfg, key)!r}, expected {expected!r} ({source})"
        for key, (expected, source) in PINNED[preset].items()
        if OmegaConf.to_object(OmegaConf.create({"v": OmegaConf.select(cfg, key)}))["v"] != expected
    ]
    assert not drifted, f"{preset} drifted from its source:\n" + "\n".join(drifted)


def test_every_paper_preset_is_pinned():
    unpinned = [p for p in PAPER_PRESETS if p not in PINNED]
    assert not unpinned, f"presets without pinned values (add them to PINNED with their sources): {unpinned}"
