"""Every run key refuses a value of the wrong type before any work, in one line (issue 37, item 15).

The keys are not listed here: the test walks every leaf of composed configs (defaults and several
methods), overrides it with values of other types (a string for a number, a bool for a count, a
scalar or a string for a list, a number for a string) and expects the run to stop in the checks
before anything is built, with a one-line error naming the key.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf, open_dict

import fewshot.run.training
from fewshot.run.config_types import check_value_types, wrong_types
from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT, compose_config

BASE = ["debug=tiny", "trainer=cpu", "logger=none"]
METHODS = ["protonet", "maml", "meta_lstm", "matchingnet_fce", "reptile", "baseline_finetune", "siamese"]
# keys whose constructors take several types on purpose: (key, the wrong-looking type it accepts)
ACCEPTED = {
    ("trainer.devices", str),  # Lightning: devices="auto" or "0,1"
    ("trainer.max_time", str),  # "DD:HH:MM:SS"
    ("trainer.accelerator", dict),  # an Accelerator object
    ("trainer.plugins", dict),  # one plugin or a list of them
}


class WorkStarted(Exception):
    """Raised where the run would start building data, method and trainer."""


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if str(name).startswith("_"):
            continue
        if isinstance(value, Mapping):
            yield from leaves(value, f"{key}.")
        else:
            yield key, value


def wrong_values(value: Any) -> list[Any]:
    """Values of another type than ``value``'s (None: the key's type is unknown from its value)."""
    if isinstance(value, bool):
        return [1, "'yes'"]
    if isinstance(value, int):
        return [f"'{value}'", True, value + 0.5]
    if isinstance(value, float):
        return [f"'{value}'", True]
    if isinstance(value, list):
        return [value[0] if value else 3, "'a'"]
    if isinstance(value, str) and "${" not in value:
        return [5, [1, 2]]
    return []


@functools.cache
def composed(model: str) -> DictConfig:
    """The tiny config of ``model`` (composed once; tests change a copy)."""
    return compose_config([*BASE, f"model={model}"], Path("/nonexistent/output"))


def cases() -> Iterator[Any]:
    seen = set()
    for model in METHODS:
        for key, value in leaves(OmegaConf.to_container(composed(model), resolve=False)):
            if key.startswith("paths.") or (key in seen and not key.startswith("model.")):
                continue
            seen.add(key)
            for wrong in wrong_values(value):
                yield pytest.param(model, key, wrong, id=f"{model}-{key}={wrong!r}")


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise WorkStarted

    monkeypatch.setattr(fewshot.run.training, "build_run", refuse)


@pytest.mark.parametrize(("model", "key", "wrong"), list(cases()))
def test_a_wrong_typed_value_of_any_key_is_refused_in_one_line_before_work(model, key, wrong, tmp_path, no_work):
    cfg = copy.deepcopy(composed(model))
    cfg.paths.output_dir = str(tmp_path)
    if (key, type(wrong)) in ACCEPTED:
        pytest.skip(f"{key} takes a {type(wrong).__name__} too")
    value = OmegaConf.create(f"v: {wrong}").v if isinstance(wrong, str) else wrong  # '5' stays a string
    with open_dict(cfg):
        OmegaConf.update(cfg, key, value, merge=False)
    with pytest.raises(ValueError) as info:
        train(cfg)
    message = str(info.value)
    assert "\n" not in message and key.rsplit(".", 1)[-1] in message, message


@pytest.mark.parametrize("model", METHODS)
def test_the_composed_configs_have_no_wrong_types(model, tmp_path):
    assert wrong_types(compose_config([*BASE, f"model={model}"], tmp_path)) == []


def test_every_preset_has_the_right_types(tmp_path):
    presets = sorted(p.relative_to(PROJECT_ROOT / "conf" / "experiment").with_suffix("")
                     for p in (PROJECT_ROOT / "conf" / "experiment").rglob("*.yaml"))  # fmt: skip
    assert len(presets) > 50
    for preset in presets:
        assert wrong_types(compose_config([f"experiment={preset}"], tmp_path)) == [], preset


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("data.n_way='5'", "data.n_way must be an integer, got '5' (a string); set e.g. data.n_way=5"),
        ("data.n_way=true", "data.n_way must be an integer, got true (a bool)"),
        ("model.optimizer.lr='0.1'", "model.optimizer.lr must be a number"),
        ("data.mean=0.5", "data.mean must be null or a list of numbers, got 0.5 (a number)"),
        ("data.mean='0.5'", "data.mean must be null or a list of numbers, got '0.5' (a string)"),
        ("trainer.max_epochs=2.5", "trainer.max_epochs must be null or an integer, got 2.5 (a number)"),
        ("callbacks.cpu_budget.minutes=true", "callbacks.cpu_budget.minutes must be null or a number, got true"),
        ("resume_allow_changes=data.n_way", "resume_allow_changes must be a list, got 'data.n_way' (a string)"),
        ("seed='1'", "seed must be an integer, got '1' (a string); set e.g. seed=0"),
    ],
)
def test_the_message_names_the_key_what_it_takes_what_it_got_and_the_fix(override, expected, tmp_path):
    cfg = compose_config([*BASE, "model=maml", "data.mean=null", override], tmp_path)
    with pytest.raises(ValueError, match="^" + expected.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_value_types(cfg)
