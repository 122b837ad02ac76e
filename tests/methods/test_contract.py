"""What every method declares: its name, its kind of training batches, whether it trains with
the shared episodic step (checked for every method class the configs build)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from hydra.utils import get_class

from fewshot.methods.base import EpisodicMethod
from tests.conftest import PROJECT_ROOT, compose_config

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
