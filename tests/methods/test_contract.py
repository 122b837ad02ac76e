"""What every method declares: its name, its kind of training batches, whether it trains with
the shared episodic step (checked for every method class the configs build)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class

from fewshot.methods.base import EpisodicMethod
from fewshot.methods.maml import MAML
from fewshot.methods.meta_lstm import MetaLSTM
from fewshot.methods.reptile import Reptile
from fewshot.models.conv4 import Conv4
from tests.conftest import PROJECT_ROOT, compose_config
from tests.methods.test_maml import random_episode

MODEL_CONFIGS = sorted((PROJECT_ROOT / "conf" / "model").glob("*.yaml"))


@cache
def method_class(config: Path) -> type[EpisodicMethod]:
    """The class a model config builds (composed: some configs extend another)."""
    return get_class(compose_config([f"model={config.stem}"], Path("unused")).model._target_)


@pytest.mark.parametrize("config", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_every_method_declares_the_contract_attributes_with_valid_values(config):
    cls = method_class(config)
    assert issubclass(cls, EpisodicMethod)
    assert cls.train_batches in ("episodes", "images")
    assert cls.uses_shared_training_step == (cls.training_step is EpisodicMethod.training_step)
    assert isinstance(cls.needs_fixed_n_way, bool)


def test_uses_shared_training_step_is_set_when_a_subclass_is_defined():
    class Plain(EpisodicMethod):
        pass

    class OwnStep(EpisodicMethod):
        def training_step(self, episode, batch_idx):
            return None

    class Inherits(OwnStep):
        pass

    assert Plain.uses_shared_training_step
    assert not OwnStep.uses_shared_training_step and not Inherits.uses_shared_training_step


def test_display_name_is_the_class_name_unless_the_method_sets_one():
    class Unnamed(EpisodicMethod):
        pass

    assert Unnamed(optimizer=None).display_name == "Unnamed"
    names = {method_class(c).__name__: method_class(c) for c in MODEL_CONFIGS}
    assert names["BaselineNearestNeighbour"].display_name == "Baseline-NN"


@pytest.mark.parametrize("cls", [MAML, Reptile, MetaLSTM])
def test_a_fixed_way_method_refuses_an_episode_of_another_n_with_the_one_shared_check(cls):
    method = cls(Conv4(1, 8, 28, n_classes=4), torch.optim.Adam)
    assert cls.needs_fixed_n_way
    expected = f"{method.display_name}'s learner outputs 4 logits but the episode is 5-way; build the learner with "
    with pytest.raises(ValueError, match=expected + r"n_classes=5 \(model.learner.n_classes"):
        method(random_episode(n_way=5))
