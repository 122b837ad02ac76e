"""Every config option composes, and every experiment preset builds its method."""

import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from fewshot.methods.base import EpisodicMethod
from tests.conftest import CONFIG_DIR, PROJECT_ROOT, compose_config

CONF = PROJECT_ROOT / "conf"
EXPERIMENTS = sorted(
    str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml")
)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_preset_composes_and_builds_its_method(experiment, tmp_path: Path):
    cfg = compose_config([f"experiment={experiment}"], tmp_path)
    method = instantiate(cfg.model)
    assert isinstance(method, EpisodicMethod)
    n_way, n_shot = (int(n) for n in re.fullmatch(r".*_(\d+)w(\d+)s", experiment).groups())
    assert (cfg.data.n_way, cfg.data.n_shot) == (n_way, n_shot), "a preset's setting is the one its name says"
    assert HydraConfig.get().runtime.choices.setting == f"{n_way}w{n_shot}s"
    if experiment.startswith("omniglot/"):  # 20 drawers per character
        datamodule = instantiate(cfg.data)
        for spec in (datamodule.train_spec, datamodule.eval_spec):
            assert spec.n_shot + spec.n_query <= 20, spec


@pytest.mark.parametrize(
    "preset",
    [f"experiment={e}" for e in EXPERIMENTS]
    + [f"{g}={o}" for g in ("debug", "hparams_search") for o in group_options(g)],
)
def test_experiment_preset_sets_only_known_keys(preset):
    """Every preset passes the unknown-key check of train.py (issue 17, item 8)."""
    from fewshot.run.config_keys import check_known_keys

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[preset], return_hydra_config=True)
        check_known_keys(cfg, cfg.hydra.runtime.choices, cfg.hydra.overrides.task)


@pytest.mark.parametrize("option", [o for o in group_options("data") if o != "episodic"])
def test_every_data_option_composes(option, tmp_path: Path):
    cfg = compose_config([f"data={option}"], tmp_path)
    assert cfg.data.source._target_.startswith("fewshot.data.")
    assert cfg.data.source.image_size == cfg.data.image_size


def targets(node: object) -> list[str]:
    """Every ``_target_`` in a config subtree."""
    if isinstance(node, DictConfig):
        own = [str(node["_target_"])] if "_target_" in node else []
        return own + [t for key in node if key != "_target_" for t in targets(node[key])]
    if isinstance(node, ListConfig):
        return [t for item in node for t in targets(item)]
    return []


@pytest.mark.parametrize("group", ["model", "trainer", "logger", "callbacks", "debug", "hparams_search"])
def test_every_option_of_group_composes_with_importable_targets(group, tmp_path: Path):
    plain = OmegaConf.to_yaml(compose_config([], tmp_path))
    for option in group_options(group):
        cfg = compose_config([f"{group}={option}"], tmp_path)
        for target in targets(cfg):
            assert callable(get_object(target)), f"{group}={option}: {target} is not callable"
        if group == "debug":
            assert OmegaConf.to_yaml(cfg) != plain, f"debug={option} changes nothing"


def test_the_pretrained_base_is_not_a_model_option(tmp_path: Path):
    """conf/pretrained_baseline.yaml is only the shared part of model=baseline_nn/baseline_finetune."""
    from hydra.errors import MissingConfigException

    assert "pretrained" not in group_options("model")
    with pytest.raises(MissingConfigException, match="pretrained"):
        compose_config(["model=pretrained"], tmp_path)
    for option in ("baseline_nn", "baseline_finetune"):
        cfg = compose_config([f"model={option}"], tmp_path)
        assert cfg.model.backbone.bn_eps == 0.001 and cfg.model.n_train_classes is None


def test_trainer_options_instantiate(tmp_path: Path):
    for option in ("default", "cpu", "auto"):
        cfg = compose_config([f"trainer={option}"], tmp_path)
        trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
        assert trainer.max_epochs == cfg.trainer.max_epochs


def test_slurm_launcher_config_composes_when_submitit_is_installed(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    assert cfg.hydra.launcher.timeout_min == 720


# restoring keys of docs/reproduce.md (Deviations) added with issue 35: each composes and sets what its row says
RESTORING_KEYS = {
    "ProtoNet training length": (
        ["experiment=omniglot/protonet_5w1s", "callbacks=plateau", "monitor=val/loss", "data.train_episodes=100",
         "callbacks.early_stopping.patience=200", "callbacks.cpu_budget.minutes=null", "trainer.max_epochs=10000"],
        {"callbacks.early_stopping.monitor": "val/loss", "callbacks.early_stopping.mode": "min",
         "callbacks.model_checkpoint.mode": "min", "callbacks.early_stopping.patience": 200},
    ),
    "ProtoNet retraining on train + validation": (
        ["experiment=omniglot/protonet_5w1s", "data.train_on_val=true", "test_checkpoint=last", "trainer.max_epochs=6"],
        {"data.train_on_val": True, "test_checkpoint": "last", "trainer.max_epochs": 6},
    ),
    "ProtoNet test episodes": (["experiment=omniglot/protonet_5w1s", "data.test_episodes=1000"],
                               {"data.test_episodes": 1000}),
    "Baseline-NN validation": (
        ["experiment=miniimagenet/baseline_nn_5w1s", "trainer.val_check_interval=1000"],
        {"trainer.val_check_interval": 1000, "trainer.check_val_every_n_epoch": None,
         "data.image_sampling": "class_balanced", "data.images_per_class": 5, "data.image_batch_size": 32},
    ),
    "Reptile validation cadence": (
        ["experiment=omniglot/reptile_5w1s", "+trainer.val_check_interval=10", "data.val_episodes=1"],
        {"trainer.val_check_interval": 10, "data.val_episodes": 1},
    ),
    "Meta-LSTM Omniglot validation cadence": (
        ["experiment=omniglot/meta_lstm_5w1s", "trainer.check_val_every_n_epoch=2"],
        {"trainer.check_val_every_n_epoch": 2, "data.train_episodes": 500},
    ),
}  # fmt: skip


@pytest.mark.parametrize("row", RESTORING_KEYS)
def test_restoring_keys_of_the_deviations_compose_to_what_their_rows_say(row, tmp_path: Path):
    overrides, expected = RESTORING_KEYS[row]
    cfg = compose_config(overrides, tmp_path)
    OmegaConf.resolve(cfg)
    assert {key: OmegaConf.select(cfg, key) for key in expected} == expected
    instantiate(cfg.trainer, logger=False)
