"""Old module paths live only in ``fewshot.run.checkpoint.MOVED_MODULES`` (no alias modules): configs,
checkpoints and committed results that name an old ``_target_`` still instantiate, load, fit and resume."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import get_class, get_object, instantiate
from omegaconf import OmegaConf

import fewshot
from fewshot.run.checkpoint import (
    CONFIG_KEY,
    MOVED_MODULES,
    check_checkpoint_fits,
    checkpoint_config,
    current_target,
    current_targets,
)
from fewshot.run.training import check_continuation
from tests.conftest import PROJECT_ROOT, compose_config

# model= option -> the _target_ its config named before the rename
OLD_MODEL_TARGETS = {
    "baseline_nn": "fewshot.methods.nearest_neighbour.BaselineNearestNeighbour",
    "baseline_finetune": "fewshot.methods.finetune.BaselineFinetune",
    "matchingnet": "fewshot.methods.matching.MatchingNetwork",
    "matchingnet_fce": "fewshot.methods.matching.MatchingNetwork",
}
# the first old name of each moved module (the spelling a config written before the move used)
OLD_NAME = {new: old for old, new in reversed(MOVED_MODULES.items())}
PACKAGE_ROOT = Path(fewshot.__file__).parent
RUN = ["debug=tiny", "trainer=cpu", "logger=none"]


def spelled_before(tree: Any) -> Any:
    """``tree`` with every ``_target_`` of a moved module spelled with the module's old name."""
    if isinstance(tree, dict):
        return {k: spelled_before(v) if k != "_target_" else old_target(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [spelled_before(v) for v in tree]
    return tree


def old_target(target: Any) -> Any:
    """``target`` with its module's old name, if it moved."""
    if not isinstance(target, str):
        return target
    module, _, name = target.rpartition(".")
    return f"{OLD_NAME.get(module, module)}.{name}"


def targets_in(tree: Any) -> list[str]:
    """Every ``_target_`` string of a nested config."""
    if isinstance(tree, dict):
        own = [tree["_target_"]] if isinstance(tree.get("_target_"), str) else []
        return own + [t for key, value in tree.items() if key != "_target_" for t in targets_in(value)]
    if isinstance(tree, list):
        return [t for value in tree for t in targets_in(value)]
    return []


def resolved_run(overrides: list[str], tmp_path: Path) -> dict[str, Any]:
    """The resolved run config of ``overrides`` on tiny data (what a checkpoint stores)."""
    return OmegaConf.to_container(compose_config([*RUN, *overrides], tmp_path), resolve=True)


def model_config(model: str, tmp_path: Path, old: bool) -> dict:
    """The resolved ``model`` config of ``model=<model>``; with ``old``, its ``_target_``s spelled as before."""
    resolved = resolved_run([f"model={model}"], tmp_path)["model"]
    if old:
        resolved = spelled_before(resolved)
        resolved["_target_"] = OLD_MODEL_TARGETS[model]
    return resolved


def module_source(dotted: str) -> Path:
    """Where module ``fewshot.<...>`` would live in this checkout's package (without importing it: an
    editable install of another checkout may answer an import)."""
    return PACKAGE_ROOT.joinpath(*dotted.split(".")[1:])


def test_no_old_module_path_has_an_alias_module_and_every_new_one_imports():
    for old, new in MOVED_MODULES.items():
        assert importlib.import_module(new).__file__.startswith(str(PACKAGE_ROOT))
        old_path = module_source(old)
        assert not old_path.with_suffix(".py").exists() and not old_path.is_dir(), f"{old} is an alias module"


@pytest.mark.parametrize("model", sorted(OLD_MODEL_TARGETS))
def test_a_config_with_old_targets_instantiates_the_same_method_through_the_mapping(model, tmp_path):
    old, new = (model_config(model, tmp_path / str(o), old=o) for o in (True, False))
    assert old != new and current_targets(old) == new
    method = instantiate(current_targets(old))
    assert type(method) is get_class(new["_target_"])


@pytest.mark.parametrize("model", ["baseline_nn", "baseline_finetune", "matchingnet"])
def test_a_checkpoint_naming_old_modules_loads_and_fits_the_renamed_method(model, tmp_path):
    old, new = (model_config(model, tmp_path / str(o), old=o) for o in (True, False))
    method = instantiate(new)
    ckpt = tmp_path / "old.ckpt"
    torch.save({CONFIG_KEY: {"model": old}, "state_dict": method.state_dict()}, ckpt)
    assert type(fewshot.load(str(ckpt))) is type(method)
    assert OmegaConf.to_container(checkpoint_config(ckpt).model) == new
    check_checkpoint_fits(ckpt, method, new)  # the renamed module is not "another method"


def test_a_run_checkpointed_under_the_old_module_paths_resumes(tmp_path):
    overrides = ["model=protonet", "callbacks=plateau"]
    current = resolved_run(overrides, tmp_path)
    stored = spelled_before(current)
    old_targets = set(targets_in(stored)) - set(targets_in(current))
    # the callbacks, the logger and the checkpoint IO moved (fewshot.plateau, fewshot.checkpoints, ...)
    assert {"fewshot.plateau.PlateauStopping", "fewshot.checkpoints.AtomicCheckpointIO"} <= old_targets
    ckpt = tmp_path / "last.ckpt"
    torch.save({CONFIG_KEY: stored, "state_dict": {}, "epoch": 3, "global_step": 12}, ckpt)
    cfg = compose_config([*RUN, *overrides], tmp_path)
    assert check_continuation(str(ckpt), current, cfg) == (3, 12)


def test_a_checkpoint_of_another_method_is_still_refused_after_the_rename(tmp_path):
    old = model_config("baseline_nn", tmp_path / "nn", old=True)
    other = resolved_run(["model=protonet"], tmp_path / "p")["model"]
    ckpt = tmp_path / "old.ckpt"
    torch.save({CONFIG_KEY: {"model": old}, "state_dict": instantiate(current_targets(old)).state_dict()}, ckpt)
    with pytest.raises(ValueError, match="holds a fewshot.methods.baseline_nn.BaselineNearestNeighbour but"):
        check_checkpoint_fits(ckpt, instantiate(other), other)


def test_current_target_renames_only_moved_modules():
    assert current_target("fewshot.training.train") == "fewshot.run.training.train"
    assert current_target("fewshot.metalstm.lstm.CoordinateLSTM") == "fewshot.nn.lstm.CoordinateLSTM"
    assert current_target("fewshot.methods.protonet.ProtoNet") == "fewshot.methods.protonet.ProtoNet"
    assert current_target("fewshot.methods.matching_extra.X") == "fewshot.methods.matching_extra.X"
    assert current_target("fewshot.run.training.train") == "fewshot.run.training.train"
    assert current_target("Bare") == "Bare"


def committed_configs() -> list[Path]:
    """Every config and results file under ``results/``."""
    root = PROJECT_ROOT / "results"
    return sorted(p for p in root.rglob("*") if p.suffix in (".json", ".yaml") and p.is_file())


def test_every_target_in_the_committed_results_resolves_through_the_mapping():
    targets = set()
    for path in committed_configs():
        text = path.read_text()
        targets |= set(targets_in(json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)))
    moved = {t for t in targets if current_target(t) != t}
    assert moved, "the committed results name no moved module: this test would not check the mapping"
    for target in sorted(targets):
        assert get_object(current_target(target)) is not None, target
