"""Old method option names and values live only in ``fewshot.run.renamed_options.RENAMED_OPTIONS``: stored
configs and checkpoints that use them load as the same method, committed results map onto today's presets,
and a command line that uses one stops in one line naming the new key, before any data loads."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

import fewshot
from fewshot.methods.choices import BN_MODES
from fewshot.run.checkpoint import CONFIG_KEY, check_checkpoint_fits, checkpoint_config, current_targets
from fewshot.run.config_keys import describe_unknown, unknown_keys
from fewshot.run.renamed_options import (
    OLD_KEYS,
    RENAMED_OPTIONS,
    CopyOf,
    RenamedOptionError,
    check_renamed_overrides,
    current_config,
    current_options,
)
from fewshot.run.training import check_continuation
from tests.conftest import PROJECT_ROOT, compose_config
from tests.methods.test_matchingnet import conv_episode

SNAPSHOTS = PROJECT_ROOT / "tests" / "training" / "preset_snapshots"
CONV = {"_target_": "fewshot.models.conv4.Conv4", "in_channels": 1, "hidden": 4, "image_size": 16}
ADAM = {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 0.001}


def old_values(target: str, key: str) -> list[Any]:
    """Every old value the table lists for ``key`` of ``target``, or a sample value when it renames none."""
    values = list(RENAMED_OPTIONS[target][key].values)
    return values or [0.5]


CASES = [(t, k, v) for t, renames in RENAMED_OPTIONS.items() for k in renames for v in old_values(t, k)]


@pytest.mark.parametrize(("target", "key", "value"), CASES, ids=lambda x: str(x).rpartition(".")[2])
def test_every_old_key_and_value_maps_to_keys_and_values_the_method_takes(target, key, value):
    mapped = current_options({"_target_": target, key: value})
    rule = RENAMED_OPTIONS[target][key]
    assert set(mapped) == {"_target_", *rule.new, *rule.adds}
    method = get_class(target)
    parameters = inspect.signature(method.__init__).parameters
    for new in rule.new:
        assert new in parameters, f"{method.__name__} takes no {new}"
        assert not isinstance(mapped[new], CopyOf)
        if new in ("train_bn", "eval_bn"):
            assert mapped[new] in getattr(method.bn_modes, new.removesuffix("_bn")), (key, value, new)


def test_values_map_as_the_table_says():
    maml = current_options({"_target_": "fewshot.methods.maml.MAML", "bn_mode": "transductive", "inner_lr": 0.4})
    assert maml == {"_target_": "fewshot.methods.maml.MAML", "train_bn": "transductive", "eval_bn": "transductive"} | {
        "inner_lr": 0.4
    }
    net = "fewshot.methods.matchingnet.MatchingNetwork"
    for bn_mode, train_bn in (("joint", "joint"), ("separate", "transductive")):
        mapped = current_options({"_target_": net, "bn_mode": bn_mode, "eval_bn_stats": "episode"})
        assert (mapped["train_bn"], mapped["eval_bn"]) == (train_bn, train_bn)  # episode: batched as in training
    assert current_options({"_target_": net, "eval_bn_stats": "episode"})["eval_bn"] == "joint"  # the old default
    assert current_options({"_target_": net, "eval_bn_stats": "running"})["eval_bn"] == "running"
    lstm = current_options(
        {"_target_": "fewshot.methods.meta_lstm.MetaLSTM", "train_bn": "batch", "eval_bn": "support"}
    )
    assert (lstm["train_bn"], lstm["eval_bn"]) == ("transductive", "support")
    protonet = {"_target_": "fewshot.methods.protonet.ProtoNet", "bn_mode": "x"}
    assert current_options(protonet) == protonet  # another method's keys are left alone
    assert current_config({"seed": 1}) == {"seed": 1}


def committed_stored_configs() -> list[tuple[Path, dict]]:
    """``(results file, stored config)`` of every committed Omniglot run of a method with renamed options."""
    found = []
    for path in sorted((PROJECT_ROOT / "results" / "omniglot").rglob("results.json")):
        config = json.loads(path.read_text())["config"]
        if config["model"]["_target_"] in RENAMED_OPTIONS:
            found.append((path, config))
    return found


def test_committed_results_written_with_old_keys_map_onto_the_values_of_todays_presets():
    """The committed results.json files keep their old keys (map on read); mapped, each run's renamed
    options have the values today's preset of that run composes (the presets changed only key names)."""
    runs = committed_stored_configs()
    targets = {config["model"]["_target_"] for _, config in runs}
    assert len(targets) == len(RENAMED_OPTIONS), "the committed results no longer cover every renamed method"
    assert any(set(config["model"]) & OLD_KEYS for _, config in runs), "no committed config is in the old names"
    for path, config in runs:
        model = current_config(config)["model"]
        assert not set(model) & OLD_KEYS, path
        dataset, _, preset = config["task_name"].partition("_")
        snapshot = yaml.safe_load((SNAPSHOTS / dataset / f"{preset}.yaml").read_text())
        for rule in RENAMED_OPTIONS[model["_target_"]].values():
            for new in rule.new:
                assert model[new] == snapshot[f"model.{new}"], (path, new)


def test_a_committed_config_in_the_old_names_builds_its_method():
    built = set()
    for path, config in committed_stored_configs():
        target = config["model"]["_target_"]
        if target in built:
            continue
        model = current_config(config)["model"]
        method = instantiate(model)
        assert type(method) is get_class(target), path
        built.add(target)
    assert built == set(RENAMED_OPTIONS)


def save_old_checkpoint(path: Path, model: dict, method: torch.nn.Module) -> None:
    """A checkpoint as train.py wrote it before the rename: ``model`` is its stored model config."""
    torch.save({CONFIG_KEY: {"model": model, "seed": 0}, "state_dict": method.state_dict()}, path)


def test_a_checkpoint_with_old_keys_loads_fits_and_predicts_as_the_renamed_method(tmp_path):
    old = {
        "_target_": "fewshot.methods.matching.MatchingNetwork",  # an old module path too
        "backbone": CONV,
        "optimizer": ADAM,
        "fce": True,
        "bn_mode": "separate",
        "eval_bn_stats": "episode",
        "fce_clip_norm": 0.25,
        "fce_clip_support_lstm": True,
    }
    new = {
        **{k: v for k, v in old.items() if k not in OLD_KEYS},
        "_target_": "fewshot.methods.matchingnet.MatchingNetwork",
    }
    new |= {
        "train_bn": "transductive",
        "eval_bn": "transductive",
        "grad_clip_norm": 0.25,
        "grad_clip_params": "fce_lstms",
    }
    torch.manual_seed(0)
    trained = instantiate(new)
    ckpt = tmp_path / "old.ckpt"
    save_old_checkpoint(ckpt, old, trained)
    loaded = fewshot.load(str(ckpt))
    assert (loaded.train_bn, loaded.eval_bn, loaded.grad_clip_norm, loaded.grad_clip_params) == (
        "transductive",
        "transductive",
        0.25,
        "fce_lstms",
    )
    assert dict(checkpoint_config(ckpt).model) == new
    check_checkpoint_fits(ckpt, trained, new)
    episode = conv_episode(n_way=3, n_shot=2, n_query=2)
    with torch.no_grad():
        assert torch.equal(loaded(episode), trained.eval()(episode))


def test_a_meta_lstm_checkpoint_with_old_keys_and_values_loads(tmp_path):
    learner = {**CONV, "n_classes": 3}
    old = {"_target_": "fewshot.metalstm.MetaLSTM", "learner": learner, "optimizer": ADAM, "n_steps": 2}
    old |= {"train_bn": "batch", "eval_bn": "batch", "backend": "torch"}
    new = current_options(current_targets(old))
    assert (new["inner_steps"], new["train_bn"], new["eval_bn"]) == (2, "transductive", "transductive")
    trained = instantiate(new)
    ckpt = tmp_path / "old.ckpt"
    save_old_checkpoint(ckpt, old, trained)
    loaded = fewshot.load(str(ckpt))
    assert loaded.metalearner.n_steps == 2 and loaded.metalearner.eval_bn == "transductive"


def spelled_before(model: dict) -> dict:
    """A current model config node written with the old option names and values of its method."""
    old = dict(model)
    for key, rule in RENAMED_OPTIONS.get(model["_target_"], {}).items():
        if not all(new in old for new in rule.new):
            continue
        value = old[rule.new[0]]
        before = [v for v, now in rule.values.items() if now == value or (isinstance(now, CopyOf) and v == "episode")]
        for new in [*rule.new, *rule.adds]:
            old.pop(new, None)
        old[key] = before[0] if before else value
    return old


@pytest.mark.parametrize("model", ["maml", "reptile", "matchingnet_fce", "meta_lstm", "baseline_finetune"])
def test_a_run_checkpointed_under_the_old_option_names_maps_back_and_resumes(model, tmp_path):
    overrides = ["debug=tiny", "trainer=cpu", "logger=none", f"model={model}"]
    current = OmegaConf.to_container(compose_config(overrides, tmp_path), resolve=True)
    stored = {**current, "model": spelled_before(current["model"])}
    assert set(stored["model"]) & OLD_KEYS or model == "meta_lstm"
    assert current_config(stored) == current
    ckpt = tmp_path / "last.ckpt"
    torch.save({CONFIG_KEY: stored, "state_dict": {}, "epoch": 3, "global_step": 12}, ckpt)
    assert check_continuation(str(ckpt), current, compose_config(overrides, tmp_path)) == (3, 12)


# --- the command line ----------------------------------------------------------------------------


def test_an_old_key_on_the_command_line_stops_train_py_in_one_line_before_any_data_loads(tmp_path):
    run_dir = tmp_path / "run"
    out = subprocess.run(
        [
            sys.executable,
            str(PROJECT_ROOT / "train.py"),
            "model=maml",
            "model.bn_mode=transductive",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: model.bn_mode=transductive is now model.train_bn=transductive model.eval_bn=transductive (MAML, "
        "old values transductive -> transductive). "
        "The shared option names and values: docs/configuration.md, Shared options."
    ]
    assert not run_dir.exists()  # stopped before Hydra made the run folder, let alone read data


def composed(*overrides: str) -> dict:
    """The ``model`` node of ``overrides`` (as train.py composes it before the check)."""
    return OmegaConf.to_container(compose_config(list(overrides), Path("unused")).model, resolve=False)


@pytest.mark.parametrize(
    ("groups", "override", "message"),
    [
        (
            ["model=reptile"],
            "model.bn_mode=non_transductive",
            "model.bn_mode=non_transductive is now model.eval_bn=support_plus_query (Reptile, old values "
            "transductive -> transductive, non_transductive -> support_plus_query)",
        ),
        (
            ["experiment=miniimagenet/matchingnet_5w1s"],
            "model.eval_bn_stats=episode",
            "model.eval_bn_stats=episode is now model.eval_bn=transductive (MatchingNetwork, old values running "
            "-> running, episode -> the model.train_bn value)",
        ),
        (["model=meta_lstm"], "model.eval_bn=batch", "model.eval_bn=batch is now model.eval_bn=transductive"),
        (["model=meta_lstm"], "++model.n_steps=5", "model.n_steps=5 is now model.inner_steps=5 (MetaLSTM)"),
        (
            ["model=baseline_finetune"],
            "model.finetune_updates=3",
            "model.finetune_updates=3 is now model.eval_inner_steps=3 (BaselineFinetune)",
        ),
        (
            ["model=matchingnet_fce"],
            "+model.fce_clip_support_lstm=true",
            "model.fce_clip_support_lstm=true is now model.grad_clip_params=fce_lstms",
        ),
        (
            ["model=protonet"],
            "model.bn_mode=joint",
            "model.bn_mode was renamed (MAML: model.train_bn and model.eval_bn, old values ",
        ),
    ],
)
def test_an_old_key_or_value_is_refused_naming_the_new_key_and_value(groups, override, message):
    with pytest.raises(RenamedOptionError) as caught:
        check_renamed_overrides([*groups, override], lambda: composed(*groups))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_current_keys_and_values_pass_without_composing():
    def never() -> dict:
        raise AssertionError("composed although no old key was given")

    check_renamed_overrides(["model=meta_lstm", "model.eval_bn=transductive", "model.inner_steps=3"], never)
    check_renamed_overrides(["model.train_bn=joint", "data.n_way=5", "seed=1"], never)
    # an old value of a kept key for a method that never had it: the method's own validator answers
    check_renamed_overrides(["model=maml", "model.eval_bn=batch"], lambda: composed("model=maml"))


def test_an_old_key_in_a_preset_is_refused_naming_the_new_one():
    run = {
        "model": {"_target_": "fewshot.methods.matchingnet.MatchingNetwork", "bn_mode": "joint", "train_bn": "joint"}
    }
    reference = {"model": {"_target_": "fewshot.methods.matchingnet.MatchingNetwork", "train_bn": "joint"}}
    found = unknown_keys(run, reference)
    assert found == [("model.bn_mode", "model.train_bn")]
    assert "'model.bn_mode' (did you mean 'model.train_bn'?)" in describe_unknown(found)


# --- no old spelling is left -----------------------------------------------------------------------


def yaml_keys(tree: Any) -> set[str]:
    """Every mapping key of a YAML tree (at any depth)."""
    if isinstance(tree, dict):
        return set(map(str, tree)) | {k for v in tree.values() for k in yaml_keys(v)}
    if isinstance(tree, list):
        return {k for v in tree for k in yaml_keys(v)}
    return set()


def test_no_method_config_preset_or_constructor_uses_an_old_option_name():
    conf = PROJECT_ROOT / "fewshot" / "conf"
    for path in sorted([*(conf / "model").glob("*.yaml"), *(conf / "experiment").rglob("*.yaml")]):
        assert not yaml_keys(yaml.safe_load(path.read_text())) & OLD_KEYS, path
    for method in method_classes():
        assert not set(inspect.signature(method.__init__).parameters) & OLD_KEYS, method
    for path in sorted((PROJECT_ROOT / "fewshot" / "methods").rglob("*.py")):
        said = re.findall(r"model\.(\w+)", path.read_text())
        assert not set(said) & OLD_KEYS, f"{path} names an old key"


def method_classes() -> list[type]:
    """Every method class of ``fewshot.methods`` (the subclasses of the episodic base)."""
    import fewshot.methods
    from fewshot.methods.base import EpisodicMethod

    for module in pkgutil.walk_packages(fewshot.methods.__path__, "fewshot.methods."):
        importlib.import_module(module.name)
    found = sorted(set(all_subclasses(EpisodicMethod)), key=lambda c: c.__name__)
    assert {get_class(t) for t in RENAMED_OPTIONS} <= set(found)
    return found


def all_subclasses(cls: type) -> list[type]:
    """``cls``'s subclasses at any depth."""
    return [sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))]


def test_every_batch_norm_mode_in_a_config_is_a_shared_one_and_documented():
    conf = PROJECT_ROOT / "fewshot" / "conf"
    for path in sorted([*(conf / "model").glob("*.yaml"), *(conf / "experiment").rglob("*.yaml")]):
        tree = yaml.safe_load(path.read_text()) or {}
        node = tree.get("model", tree)
        for key in ("train_bn", "eval_bn"):
            assert node.get(key, "transductive") in BN_MODES, (path, key)
    docs = (PROJECT_ROOT / "docs" / "configuration.md").read_text()
    for mode, meaning in BN_MODES.items():
        assert f"`{mode}` {meaning}" in docs, mode
