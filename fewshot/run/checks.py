"""Checks of the run's top-level keys before any work starts, and of a resume's config.

Data keys are checked by the datamodule's constructor (``fewshot.data.datamodule``), method keys
by the methods' constructors, Trainer keys by Lightning: all of them before data are read. This
module covers what only the run uses: seeds, the run mode (train/test/resume/ckpt_path), the
evaluation shots, the optimised metric, gradient clipping set twice, and which keys a resume may change.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig

from fewshot.data.datamodule import is_int
from fewshot.evaluation.scoring import MONITOR_MODES
from fewshot.run.checkpoint import LIGHTNING_CKPT_NAMES
from fewshot.run.config_types import check_value_types
from fewshot.run.folder import RunConfigError

# which weights a training run tests (the top-level ``test_checkpoint`` key)
TEST_CHECKPOINTS = ("best", "last")
# the stages of results.json a sweeper's ``optimized_metric`` (``<stage>/<key>``) can read
METRIC_STAGES = ("val", "val_last", "test")


def check_run_config(cfg: DictConfig) -> None:
    """Refuse bad run keys before anything is built: every key's type (``fewshot.run.config_types``),
    then the ranges and combinations of the top-level ones (item 9 of issue 17)."""
    check_value_types(cfg)
    seed = cfg.get("seed")
    if not is_int(seed) or seed < 0:
        raise RunConfigError(f"seed must be a non-negative integer, got {seed!r}; set e.g. seed=0.")
    for flag in ("train", "test", "validate", "resume", "retain_freed_memory"):
        value = cfg.get(flag)
        if value is not None and not isinstance(value, bool):
            raise RunConfigError(f"{flag} must be true or false, got {value!r}; set {flag}=true or {flag}=false.")
    check_run_mode(cfg)
    choice = cfg.get("test_checkpoint", "best")
    if choice not in TEST_CHECKPOINTS:
        raise RunConfigError(
            f"test_checkpoint must be one of {list(TEST_CHECKPOINTS)}, got {choice!r}: 'best' tests the "
            "best-on-validation checkpoint, 'last' the final weights of training (saved as checkpoints/final.ckpt)."
        )
    if (cfg.get("data") or {}).get("train_on_val") is True and choice != "last" and cfg.get("train", True):
        raise RunConfigError(
            "data.train_on_val=true trains on the validation classes, so the best-on-validation checkpoint "
            "would be chosen on trained-on classes; set test_checkpoint=last (and a fixed trainer.max_epochs, "
            "e.g. the epochs of the run it retrains)."
        )
    variant = cfg.get("variant")
    bad_variant = not isinstance(variant, str) or not variant.strip() or "(" in variant or ")" in variant
    if variant is not None and bad_variant:
        raise RunConfigError(
            f"variant must be a short name without parentheses (or null), got {variant!r}; "
            "set e.g. variant='meta-batch 4'."
        )
    monitor = cfg.get("monitor", "val/acc")
    if monitor not in MONITOR_MODES:
        raise RunConfigError(
            f"monitor must be one of {list(MONITOR_MODES)}, got {monitor!r}: it picks the best validation "
            "(the checkpoint test_checkpoint=best tests); set monitor=val/acc or monitor=val/loss."
        )
    check_eval_shots(cfg)
    check_gradient_clipping(cfg)
    check_training_ends(cfg)
    metric = str(cfg.get("optimized_metric") or "val/acc")
    stage, _, key = metric.partition("/")
    if stage not in METRIC_STAGES or not key:
        raise RunConfigError(
            f"optimized_metric must be '<stage>/<key>' with a stage of {list(METRIC_STAGES)}, got {metric!r}; "
            "set e.g. optimized_metric=val/acc."
        )
    allowed = cfg.get("resume_allow_changes") or []
    if not isinstance(allowed, list | ListConfig) or not all(isinstance(k, str) for k in allowed):
        raise RunConfigError(
            f"resume_allow_changes must be a list of config keys, got {allowed!r}; "
            "set e.g. resume_allow_changes=[data.val_episodes]."
        )


def check_run_mode(cfg: DictConfig) -> None:
    """``train``/``test``/``validate``/``resume``/``ckpt_path`` fit together and the checkpoint
    exists (item 5)."""
    train, test, validate, resume, ckpt = (
        cfg.get("train", True),
        cfg.get("test", True),
        cfg.get("validate", False),
        cfg.get("resume", False),
        cfg.get("ckpt_path"),
    )
    if not train and not test and not validate:
        raise RunConfigError(
            "train=false and test=false leave nothing to do; set train=true, test=true or validate=true."
        )
    if train and validate:
        raise RunConfigError(
            "validate=true scores a trained checkpoint on the validation episodes, but train=true (training "
            "validates by itself); pass train=false ckpt_path=<checkpoint> with validate=true."
        )
    if not train and resume:
        raise RunConfigError(
            "resume=true continues training, but train=false; to test a run's last state pass "
            "ckpt_path=<run folder>/checkpoints/last.ckpt instead of resume=true."
        )
    if not train and not ckpt:
        raise RunConfigError(
            "train=false tests a trained model, but no ckpt_path is given (it would score an untrained one); "
            "pass ckpt_path=<run folder>/checkpoints/<checkpoint>.ckpt."
        )
    if ckpt and str(ckpt) in LIGHTNING_CKPT_NAMES:
        raise RunConfigError(
            f"ckpt_path={ckpt} is a Lightning shorthand this project does not take: it would skip the checks "
            "of a resume (same config, same method) and, with train=false, test untrained weights. Continue "
            "a run with resume=true hydra.run.dir=<run folder>; test or train from a checkpoint by its file, "
            "e.g. ckpt_path=<run folder>/checkpoints/last.ckpt."
        )
    if ckpt and not os.path.isfile(ckpt):
        raise FileNotFoundError(f"Checkpoint {ckpt} not found; pass the path of a .ckpt written by train.py.")


def check_training_ends(cfg: DictConfig) -> None:
    """A training run has something that ends it: an epoch or step cap, a time or CPU budget, a plateau
    (early stopping) or ``fast_dev_run``; ``trainer.max_epochs=-1`` alone would train forever."""
    trainer = cfg.get("trainer") or {}
    if not cfg.get("train", True) or trainer.get("fast_dev_run"):
        return
    max_epochs, max_steps = trainer.get("max_epochs"), trainer.get("max_steps", -1)
    callbacks = [entry for entry in (cfg.get("callbacks") or {}).values() if isinstance(entry, Mapping)]
    budget = any(
        str(e.get("_target_", "")).endswith("CpuTimeBudget") and e.get("minutes") is not None for e in callbacks
    )
    plateau = any(str(entry.get("_target_", "")).endswith(("EarlyStopping", "PlateauStopping")) for entry in callbacks)
    endless_epochs = is_int(max_epochs) and max_epochs < 0
    if endless_epochs and not (is_int(max_steps) and max_steps >= 0) and not trainer.get("max_time"):
        if not budget and not plateau:
            raise RunConfigError(
                f"trainer.max_epochs={max_epochs} with no trainer.max_steps, trainer.max_time, "
                "callbacks.cpu_budget.minutes or plateau stopping would train forever; set trainer.max_epochs=<n>, "
                "trainer.max_steps=<n>, callbacks.cpu_budget.minutes=<n> or callbacks=plateau."
            )


def check_eval_shots(cfg: DictConfig) -> None:
    """``eval.shots`` is null or a list of positive integers no larger than ``data.n_shot``."""
    shots = (cfg.get("eval") or {}).get("shots")
    if shots is None:
        return
    if isinstance(shots, str) or not all(is_int(k) and k >= 1 for k in shots):
        raise RunConfigError(f"eval.shots must be null or a list of positive integers, e.g. [1,5]; got {shots}.")
    n_shot = cfg.data.get("n_shot")
    if shots and is_int(n_shot) and max(shots) > n_shot:
        raise RunConfigError(
            f"eval.shots={list(shots)} asks for {max(shots)} shots but test episodes have data.n_shot={n_shot}; "
            f"set data.n_shot={max(shots)} (the smaller shots use the first images of each class's support)."
        )


def check_gradient_clipping(cfg: DictConfig) -> None:
    """Refuse ``trainer.gradient_clip_val`` for a method that clips its own gradients with a model
    key that is set (its ``own_gradient_clipping``): one of the two would silently win."""
    trainer_clip = (cfg.get("trainer") or {}).get("gradient_clip_val")
    model = cfg.get("model") or {}
    if trainer_clip is None or not model.get("_target_"):
        return
    method = get_class(model._target_)
    for key in getattr(method, "own_gradient_clipping", ()):
        own = model.get(key)
        if own is not None:
            raise RunConfigError(
                f"trainer.gradient_clip_val={trainer_clip} and model.{key}={own} both clip {method.__name__}'s "
                f"gradients, which clips its own; set the clip with model.{key}={trainer_clip} and leave "
                f"trainer.gradient_clip_val=null (or set model.{key}=null to clip with the Trainer's)."
            )


def config_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (nested dicts compared per key)."""
    if isinstance(stored, Mapping) and isinstance(current, Mapping):
        differing = []
        for key in sorted(set(stored) | set(current), key=str):
            path = f"{prefix}{key}"
            differing += config_differences(stored.get(key), current.get(key), f"{path}.") or []
        return differing
    return [] if stored == current else [prefix.rstrip(".")]


def is_allowed(key: str, allowed: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``allowed`` or lies under one of them."""
    return any(key == a or key.startswith(f"{a}.") for a in allowed)


def value_at(tree: Mapping[str, Any], key: str) -> Any:
    """The value at a dotted key of a nested dict (``<absent>`` when missing)."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return "<absent>"
        node = node[part]
    return node


def moved_with_run_folder(stored: Any, current: Any, stored_dir: Any, current_dir: Any) -> bool:
    """Whether two values are the same path inside the run folder, before and after the folder
    moved (``callbacks.*.dirpath``, ``trainer.default_root_dir`` follow ``paths.output_dir``)."""
    if not all(isinstance(v, str) for v in (stored, current, stored_dir, current_dir)):
        return False
    return stored.startswith(stored_dir) and current == current_dir + stored[len(stored_dir) :]


# our drop-in successors of Lightning classes (the same checkpoint state under the same key): a run
# checkpointed by the one resumes with the other
DROP_IN_SUCCESSORS = {
    "pytorch_lightning.callbacks.ModelCheckpoint": "fewshot.run.callbacks.model_checkpoint.RunFolderCheckpoint",
    "pytorch_lightning.callbacks.EarlyStopping": "fewshot.run.callbacks.plateau.PlateauStopping",
}


def succeeded_by(stored: Any, current: Any) -> bool:
    """Whether ``current`` is our drop-in successor of the class ``stored`` names (a ``_target_``)."""
    return isinstance(stored, str) and DROP_IN_SUCCESSORS.get(stored) == current


def same_existing_path(stored: Any, current: Any) -> bool:
    """Whether two values name one existing file or folder by different spellings, e.g. a data
    root reached from another checkout of the project or through a link."""
    if not (isinstance(stored, str) and isinstance(current, str) and stored and current):
        return False
    try:
        return os.path.samefile(stored, current)
    except (OSError, ValueError):
        return False


def check_resume_config(stored: Mapping[str, Any], current: Mapping[str, Any], ckpt_path: str | Path) -> None:
    """Refuse to continue a checkpoint's training under a config that differs from its own (item 6).

    ``stored`` is the resolved config kept in the checkpoint, ``current`` the run's. Keys in the
    run's ``resume_may_change`` (budgets, where things are written, test-time options) and in
    ``resume_allow_changes`` (the user's deliberate exceptions) may differ; model arguments the
    data fill in (``fill_from_data``) are compared as filled; two spellings of one existing path are
    the same value.
    """
    own = ["resume_may_change", "resume_allow_changes"]  # the mechanism's own keys
    allowed = [*own, *current.get("resume_may_change", []), *current.get("resume_allow_changes", [])]
    stored_dir, current_dir = value_at(stored, "paths.output_dir"), value_at(current, "paths.output_dir")
    differing = []
    for key in config_differences(stored, current):
        if is_allowed(key, allowed):
            continue
        if moved_with_run_folder(value_at(stored, key), value_at(current, key), stored_dir, current_dir):
            continue
        if same_existing_path(value_at(stored, key), value_at(current, key)):
            continue
        if key.endswith("._target_") and succeeded_by(value_at(stored, key), value_at(current, key)):
            continue
        differing.append(key)
    if differing:
        shown = "; ".join(
            f"{k}: {value_at(stored, k)!r} (run) vs {value_at(current, k)!r} (now)" for k in differing[:8]
        )
        more = f" and {len(differing) - 8} more" if len(differing) > 8 else ""
        raise RunConfigError(
            f"The config differs from the one {ckpt_path} was trained with: {shown}{more}. Continuing would mix "
            "both in one run. Resume with the run's own overrides (its .hydra/overrides.yaml), or accept the "
            f"change deliberately with resume_allow_changes=[{','.join(differing)}]."
        )
