"""The ``setting`` group (conf/setting/<N>w<K>s.yaml): a run's N-way K-shot, said once.

Presets pick their setting in their defaults list and set no ``data.n_way`` / ``data.n_shot``
of their own; ``setting=`` on the command line wins over a preset's, and ``data.n_way=`` /
``data.n_shot=`` win over both.
"""

from __future__ import annotations

import re

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

from fewshot.run.resolvers import register_resolvers
from tests.conftest import CONFIG_DIR, PROJECT_ROOT

register_resolvers()

CONF = PROJECT_ROOT / "conf"
SETTINGS = sorted(p.stem for p in (CONF / "setting").glob("*.yaml"))
PRESET_FILES = sorted((CONF / "experiment").rglob("*.yaml"))
# a base preset, one that changes its parent's setting, one that inherits it, one with its own training way
PRESETS = ["omniglot/maml_5w1s", "omniglot/meta_lstm_20w1s", "omniglot/fomaml_5w1s", "miniimagenet/protonet_5w5s"]


def way_and_shot(name: str) -> tuple[int, int]:
    """``(N, K)`` of a name ending in ``<N>w<K>s``."""
    match = re.search(r"(\d+)w(\d+)s$", name)
    assert match, f"{name} does not end in <N>w<K>s"
    return int(match.group(1)), int(match.group(2))


def composed(*overrides: str) -> dict:
    """The resolved ``data`` of ``train.yaml`` composed with ``overrides``, and the chosen setting under ``choice``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    return {**OmegaConf.to_container(cfg.data, resolve=True), "choice": cfg.hydra.runtime.choices.setting}


def test_the_settings_are_the_four_table_columns_and_set_what_they_are_named():
    assert SETTINGS == ["20w1s", "20w5s", "5w1s", "5w5s"]
    for setting in SETTINGS:
        n_way, n_shot = way_and_shot(setting)
        assert yaml.safe_load((CONF / "setting" / f"{setting}.yaml").read_text()) == {"n_way": n_way, "n_shot": n_shot}


def test_without_a_setting_the_default_run_is_5_way_1_shot():
    data = composed()
    assert (data["n_way"], data["n_shot"], data["choice"]) == (5, 1, "5w1s")


def test_no_preset_sets_the_way_or_shot_itself():
    """The setting lines once: a preset's way and shot come from its setting, never its own body."""
    restating = [
        f"{path.relative_to(CONF)}: data.{key}"
        for path in PRESET_FILES
        for key in ("n_way", "n_shot")
        if key in ((yaml.safe_load(path.read_text()) or {}).get("data") or {})
    ]
    assert not restating, f"presets setting way or shot themselves (pick `- override /setting: <N>w<K>s`): {restating}"


@pytest.mark.parametrize("preset", PRESETS)
def test_a_setting_on_the_command_line_changes_only_the_way_and_shot(preset: str):
    """``setting=`` wins over the preset's own and changes nothing else: the same config as
    ``data.n_way=`` / ``data.n_shot=``."""
    own = way_and_shot(preset)
    other = next(s for s in SETTINGS if way_and_shot(s) != own)
    n_way, n_shot = way_and_shot(other)
    by_setting = composed(f"experiment={preset}", f"setting={other}")
    by_keys = composed(f"experiment={preset}", f"data.n_way={n_way}", f"data.n_shot={n_shot}")
    assert (by_setting["n_way"], by_setting["n_shot"], by_setting["choice"]) == (n_way, n_shot, other)
    assert {**by_setting, "choice": None} == {**by_keys, "choice": None}


def test_data_keys_on_the_command_line_win_over_the_setting():
    data = composed("experiment=omniglot/maml_20w5s", "setting=5w5s", "data.n_way=10")
    assert (data["n_way"], data["n_shot"], data["choice"]) == (10, 5, "5w5s")
    data = composed("experiment=omniglot/meta_lstm_20w1s", "data.n_shot=3")
    assert (data["n_way"], data["n_shot"], data["choice"]) == (20, 3, "20w1s")


def test_an_unknown_setting_is_refused_naming_the_settings():
    with pytest.raises(MissingConfigException, match=r"setting/7w3s(.|\n)*Available options in 'setting'"):
        composed("setting=7w3s")
