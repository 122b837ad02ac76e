"""Paths that moved when the layout was regrouped (issue 19, item 4) still work: configs, checkpoints
and results written before name the old ``_target_`` strings, and the old commands are documented."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import fewshot
from fewshot.checkpoints import CONFIG_KEY, MOVED_MODULES, check_checkpoint_fits, current_target
from tests.conftest import PROJECT_ROOT, compose_config

# model= option -> the _target_ its config named before the move (the Meta-LSTM's is unchanged)
OLD_TARGETS = {
    "baseline_nn": "fewshot.methods.nearest_neighbour.BaselineNearestNeighbour",
    "baseline_finetune": "fewshot.methods.finetune.BaselineFinetune",
    "matchingnet": "fewshot.methods.matching.MatchingNetwork",
    "matchingnet_fce": "fewshot.methods.matching.MatchingNetwork",
    "meta_lstm": "fewshot.methods.meta_lstm.MetaLSTM",
}
METALSTM_PIECES = ("cell", "flat", "lstm", "metalearner", "native", "preprocess")


def model_config(model: str, tmp_path: Path, old: bool) -> dict:
    """The resolved ``model`` config of ``model=<model>`` on tiny data; with ``old``, every
    ``_target_`` of a moved module spelled as before the move."""
    cfg = compose_config(["debug=tiny", "trainer=cpu", "logger=none", f"model={model}"], tmp_path)
    resolved = OmegaConf.to_container(cfg.model, resolve=True)
    if old:
        resolved["_target_"] = OLD_TARGETS[model]
        if isinstance(resolved.get("grid"), dict):
            resolved["grid"]["_target_"] = "fewshot.methods.finetune.FinetuneGrid"
    return resolved


@pytest.mark.parametrize("model", sorted(OLD_TARGETS))
def test_a_config_with_the_old_targets_still_instantiates_the_same_method(model, tmp_path):
    old, new = (model_config(model, tmp_path / str(o), old=o) for o in (True, False))
    assert old != new or model == "meta_lstm"
    assert get_class(old["_target_"]) is get_class(new["_target_"])
    method = instantiate(old)
    assert type(method) is get_class(new["_target_"])
    if model == "baseline_finetune":
        assert type(method.grid) is get_class(new["grid"]["_target_"])


@pytest.mark.parametrize("model", ["baseline_nn", "baseline_finetune", "matchingnet"])
def test_a_checkpoint_naming_the_old_module_loads_and_fits_the_renamed_method(model, tmp_path):
    old, new = (model_config(model, tmp_path / str(o), old=o) for o in (True, False))
    method = instantiate(new)
    ckpt = tmp_path / "old.ckpt"
    torch.save({CONFIG_KEY: {"model": old}, "state_dict": method.state_dict()}, ckpt)
    assert type(fewshot.load(str(ckpt))) is type(method)
    check_checkpoint_fits(ckpt, method, new)  # the renamed module is not "another method"
    check_checkpoint_fits(ckpt, method, old)


def test_a_checkpoint_of_another_method_is_still_refused_after_the_rename(tmp_path):
    old, other = model_config("baseline_nn", tmp_path / "nn", old=True), model_config("protonet", tmp_path / "p", False)
    ckpt = tmp_path / "old.ckpt"
    torch.save({CONFIG_KEY: {"model": old}, "state_dict": instantiate(old).state_dict()}, ckpt)
    with pytest.raises(ValueError, match="holds a fewshot.methods.baseline_nn.BaselineNearestNeighbour but"):
        check_checkpoint_fits(ckpt, instantiate(other), other)


def test_current_target_renames_only_moved_modules():
    for old, new in MOVED_MODULES.items():
        assert current_target(f"{old}.Thing") == f"{new}.Thing"
        assert importlib.import_module(old) is importlib.import_module(new)
    assert current_target("fewshot.methods.protonet.ProtoNet") == "fewshot.methods.protonet.ProtoNet"
    assert current_target("fewshot.methods.matching_extra.X") == "fewshot.methods.matching_extra.X"
    assert current_target("Bare") == "Bare"


@pytest.mark.parametrize("piece", METALSTM_PIECES)
def test_the_old_metalstm_modules_are_the_moved_ones(piece):
    old = importlib.import_module(f"fewshot.metalstm.{piece}")
    assert old is importlib.import_module(f"fewshot.methods.meta_lstm.{piece}")


def test_the_old_metalstm_package_exports_the_same_names():
    old, new = importlib.import_module("fewshot.metalstm"), importlib.import_module("fewshot.methods.meta_lstm")
    assert old.__all__ and all(getattr(old, name) is getattr(new, name) for name in old.__all__)


def run_help(module: str) -> str:
    """What ``python -m <module> --help`` prints (a real interpreter: running it in this process
    would re-import packages and leave the test session's modules inconsistent)."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.parametrize("module", ["fewshot.reporting", "fewshot.report"])
def test_the_report_runs_as_fewshot_reporting_and_its_old_name(module):
    assert "usage: python -m fewshot.reporting" in run_help(module)


@pytest.mark.parametrize("module", ["benchmarks.meta_lstm", "fewshot.metalstm.bench"])
def test_the_metalstm_bench_runs_as_benchmarks_meta_lstm_and_its_old_name(module):
    printed = run_help(module)
    assert "python -m benchmarks.meta_lstm" in printed and "--variants" in printed
