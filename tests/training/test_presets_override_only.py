"""Presets are override-only: no preset sets a key to the value its defaults list already gives.

A restated default is a silent copy: when the default changes, the copy keeps the old value.
Each config is composed twice, once as it is and once with its body removed (only its defaults
list left, in a search-path folder), and every key its body sets must differ between the two.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from tests.conftest import CONFIG_DIR, PROJECT_ROOT

CONF = PROJECT_ROOT / "conf"
GLOBAL_PACKAGE = "# @package _global_"
# preset groups (global package), and model configs that extend another model config
PRESET_GROUPS = ("experiment", "debug", "hparams_search")
EXTENDING_GROUPS = ("model",)
STRIPPED_SUFFIX = "__defaults_only"


def configs_with_defaults() -> list[str]:
    """``group/option`` of every preset, and of every model config whose defaults list extends another."""
    found = [
        str(p.relative_to(CONF).with_suffix(""))
        for group in PRESET_GROUPS
        for p in sorted((CONF / group).rglob("*.yaml"))
    ]
    for group in EXTENDING_GROUPS:
        for p in sorted((CONF / group).rglob("*.yaml")):
            if "defaults" in (yaml.safe_load(p.read_text()) or {}):
                found.append(str(p.relative_to(CONF).with_suffix("")))
    return found


def leaves(tree: Any, prefix: str) -> Iterator[str]:
    """Dotted paths of the leaves of a mapping (lists and empty mappings are leaves)."""
    if isinstance(tree, Mapping) and tree:
        for key, value in tree.items():
            yield from leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix


def value_at(tree: Any, path: str) -> tuple[bool, Any]:
    """``(present, value)`` at a dotted path of a nested mapping."""
    for part in path.split("."):
        if not isinstance(tree, Mapping) or part not in tree:
            return False, None
        tree = tree[part]
    return True, tree


def split_config(file: Path) -> tuple[str, list[Any], dict[str, Any]]:
    """A config file's header line (its ``@package``, or ""), defaults list and body."""
    text = file.read_text()
    content = yaml.safe_load(text) or {}
    header = GLOBAL_PACKAGE if GLOBAL_PACKAGE in text.splitlines()[:12] else ""
    defaults = content.pop("defaults", [])
    return header, defaults, content


def compose_group_option(group_option: str, searchpath: Path) -> dict[str, Any]:
    """The unresolved config of ``train.yaml`` with ``group=option`` (no Hydra node)."""
    group, _, option = group_option.partition("/")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"{group}={option}", f"hydra.searchpath=[file://{searchpath}]"])
    return OmegaConf.to_container(cfg, resolve=False)


def restated_defaults(file: Path, group_option: str, tmp_path: Path) -> list[str]:
    """The keys that config ``file`` (option ``group_option``) sets to the value its defaults
    list already gives, as ``key: value``."""
    header, defaults, body = split_config(file)
    stripped = tmp_path / f"{group_option}{STRIPPED_SUFFIX}.yaml"  # same folder: relative defaults still resolve
    stripped.parent.mkdir(parents=True, exist_ok=True)
    stripped.write_text(f"{header}\n" + yaml.safe_dump({"defaults": defaults}, sort_keys=False))
    with_body = compose_group_option(group_option, tmp_path)
    without_body = compose_group_option(f"{group_option}{STRIPPED_SUFFIX}", tmp_path)
    prefix = "" if header else group_option.partition("/")[0]
    restated = []
    for key in leaves(body, prefix):
        if key.split(".")[0] == "hydra":  # Hydra's own node is not in the composed job config
            continue
        present, before = value_at(without_body, key)
        if present and before == value_at(with_body, key)[1]:
            restated.append(f"{key}: {before!r}")
    return restated


@pytest.mark.parametrize("group_option", configs_with_defaults())
def test_preset_sets_no_key_to_the_value_its_defaults_give(group_option: str, tmp_path: Path):
    restated = restated_defaults(CONF / f"{group_option}.yaml", group_option, tmp_path)
    assert not restated, (
        f"conf/{group_option}.yaml sets keys to the value its defaults list already gives: {restated}. "
        "Delete them (a copy keeps the old value when the default changes)."
    )


def test_a_restated_default_is_found(tmp_path: Path):
    """The check can fail: a preset that restates its model's inner_lr and data's n_query is caught."""
    preset = tmp_path / "experiment" / "restating.yaml"
    preset.parent.mkdir(parents=True)
    preset.write_text(
        f"{GLOBAL_PACKAGE}\ndefaults:\n  - override /model: maml\n"
        "data:\n  n_query: 15\n  n_shot: 5\nmodel:\n  inner_lr: 0.4\n  inner_steps: 2\n"
    )
    assert restated_defaults(preset, "experiment/restating", tmp_path) == ["data.n_query: 15", "model.inner_lr: 0.4"]
