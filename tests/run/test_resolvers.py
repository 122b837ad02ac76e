"""task_name is derived from the chosen experiment (fewshot/run/resolvers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from fewshot.run.resolvers import TASK_NAME_RESOLVER, register_resolvers, task_name_of
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

EXPERIMENTS = sorted(
    str(p.relative_to(PROJECT_ROOT / "conf" / "experiment").with_suffix(""))
    for p in (PROJECT_ROOT / "conf" / "experiment").rglob("*.yaml")
)


def test_task_name_of_an_experiment_choice():
    assert task_name_of("omniglot/meta_lstm_5w1s", "train") == "omniglot_meta_lstm_5w1s"
    assert task_name_of(None, "train") == "train"


def test_registering_twice_keeps_one_resolver():
    register_resolvers()
    register_resolvers()
    assert OmegaConf.has_resolver(TASK_NAME_RESOLVER)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_preset_is_named_after_its_path(experiment: str, tmp_path: Path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    assert cfg.task_name == experiment.replace("/", "_")


def test_no_experiment_is_train_and_an_explicit_task_name_wins(tmp_path: Path):
    assert compose_config([], tmp_path).task_name == "train"
    assert compose_config(["experiment=omniglot/maml_5w1s", "task_name=mine"], tmp_path).task_name == "mine"


def test_the_run_folder_uses_the_derived_name(tmp_path: Path):
    """While Hydra launches, the name comes from the config's own hydra node (no HydraConfig yet)."""
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=omniglot/reptile_20w5s"], return_hydra_config=True)
    assert "/omniglot_reptile_20w5s/runs/" in cfg.hydra.run.dir
    assert "/omniglot_reptile_20w5s/multiruns/" in cfg.hydra.sweep.dir


def test_a_config_composed_without_hydra_says_how_to_compose_it():
    HydraConfig.instance().cfg = None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=omniglot/maml_5w1s"])
    with pytest.raises(InterpolationResolutionError, match="return_hydra_config=True"):
        _ = cfg.task_name
