"""Checkpoints that carry their own composed config, and loading them back."""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from lightning_fabric.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from fewshot.io import output_error, temporary_for
from fewshot.run.renamed_options import current_config

log = logging.getLogger(__name__)

CONFIG_KEY = "fewshot_config"
# ``ckpt_path`` values Lightning resolves itself instead of reading a file (refused: fewshot.run.checks)
LIGHTNING_CKPT_NAMES = frozenset({"last", "best", "hpc", "registry"})
# modules moved or renamed after configs and checkpoints naming them were written: old -> new. The one
# mapping for old paths (no alias modules): every ``_target_`` of a stored config goes through it when read,
# then its model options through fewshot.run.renamed_options.RENAMED_OPTIONS.
MOVED_MODULES = {
    "fewshot.methods.nearest_neighbour": "fewshot.methods.baseline_nn",
    "fewshot.methods.finetune": "fewshot.methods.baseline_finetune",
    "fewshot.methods.matching": "fewshot.methods.matchingnet",
    "fewshot.metalstm": "fewshot.methods.meta_lstm",
    "fewshot.metalstm.cell": "fewshot.methods.meta_lstm.cell",
    "fewshot.metalstm.metalearner": "fewshot.methods.meta_lstm.metalearner",
    "fewshot.metalstm.lstm": "fewshot.nn.lstm",
    "fewshot.metalstm.flat": "fewshot.nn.flat",
    "fewshot.metalstm.native": "fewshot.nn.native",
    "fewshot.metalstm.preprocess": "fewshot.nn.preprocess",
    "fewshot.methods.meta_lstm.lstm": "fewshot.nn.lstm",
    "fewshot.methods.meta_lstm.flat": "fewshot.nn.flat",
    "fewshot.methods.meta_lstm.native": "fewshot.nn.native",
    "fewshot.methods.meta_lstm.preprocess": "fewshot.nn.preprocess",
    "fewshot.methods.scoring": "fewshot.evaluation.scoring",
    "fewshot.methods.nonfinite": "fewshot.run.nonfinite",
    "fewshot.report": "fewshot.reporting.build",
    "fewshot.training": "fewshot.run.training",
    "fewshot.runchecks": "fewshot.run.checks",
    "fewshot.config_keys": "fewshot.run.config_keys",
    "fewshot.config_types": "fewshot.run.config_types",
    "fewshot.runfolder": "fewshot.run.folder",
    "fewshot.checkpoints": "fewshot.run.checkpoint",
    "fewshot.interrupt": "fewshot.run.signals",
    "fewshot.loggers": "fewshot.run.loggers",
    "fewshot.allocator": "fewshot.run.process",
    "fewshot.quiet": "fewshot.run.process",
    "fewshot.resolvers": "fewshot.run.resolvers",
    "fewshot.budget": "fewshot.run.callbacks.budget",
    "fewshot.plateau": "fewshot.run.callbacks.plateau",
    "fewshot.speed_probe": "fewshot.run.callbacks.speed_probe",
    "fewshot.run_checkpoint": "fewshot.run.callbacks.model_checkpoint",
    "fewshot.provenance": "fewshot.run.callbacks.provenance",
    "fewshot.reproducibility": "fewshot.run.callbacks.rng_state",
}


class StoreConfigInCheckpoint(pl.Callback):
    """Adds the resolved run config to every checkpoint so ``fewshot.load`` can rebuild it."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        """Store the config next to the weights."""
        checkpoint[CONFIG_KEY] = self.config


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used (corrupt, not a checkpoint, or refused)."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint holding Python objects other than tensors and plain data: never unpickled."""


def load_checkpoint_file(
    ckpt_path: str | os.PathLike, map_location: str | torch.device | Callable | None = "cpu"
) -> Any:
    """``torch.load`` of tensors and plain data only (``weights_only=True``): loading never runs code.

    Raises:
        UnsafeCheckpointError: the file holds other Python objects (whose loading could run code).
        CheckpointError: the file is corrupt, truncated or not a torch file.
    """
    try:
        return torch.load(ckpt_path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(err))
        if not found:  # garbage, a truncated file or another format: not a torch checkpoint at all
            raise CheckpointError(
                f"Cannot read checkpoint {ckpt_path}: it is not a readable checkpoint (corrupt, truncated or not "
                "a torch file). Use another checkpoint of the run, or one written by `python train.py`."
            ) from err
        raise UnsafeCheckpointError(
            f"Refusing to load checkpoint {ckpt_path}: it contains Python objects other than tensors and plain "
            f"data (it names {found.group(1)}), and loading those could run code, so fewshot never executes "
            "them. Use a checkpoint written by `python train.py`."
        ) from err
    except Exception as err:  # noqa: BLE001 - any other failure means a bad file
        raise CheckpointError(
            f"Cannot read checkpoint {ckpt_path}: {str(err).splitlines()[0] if str(err) else type(err).__name__}. "
            "The file is corrupt, truncated or not a checkpoint; use another checkpoint of the run."
        ) from err


def read_checkpoint(ckpt_path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint file on the CPU, with a clear error when it is not one of ours."""
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"Checkpoint {ckpt_path} not found; pass the path of a .ckpt written by train.py.")
    checkpoint = load_checkpoint_file(ckpt_path)
    if not isinstance(checkpoint, dict) or CONFIG_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"{ckpt_path} is not a fewshot checkpoint (no stored config); "
            "use a checkpoint written by `python train.py`."
        )
    checkpoint[CONFIG_KEY] = current_config(current_targets(checkpoint[CONFIG_KEY]))
    return checkpoint


def checkpoint_config(ckpt_path: str | os.PathLike) -> DictConfig:
    """The composed config a checkpoint was trained with."""
    return OmegaConf.create(read_checkpoint(ckpt_path)[CONFIG_KEY])


def check_checkpoint_fits(
    ckpt_path: str | os.PathLike, method: torch.nn.Module, model_config: Mapping[str, Any]
) -> None:
    """Refuse, before Lightning loads it, a checkpoint of another method or architecture.

    Compares the checkpoint's stored ``model._target_`` with the configured one, then its
    state-dict keys and shapes with ``method``'s, and raises a ValueError naming both sides,
    the model settings that differ, and the fix (the ``model=``/``experiment=`` the checkpoint
    was trained with, or another checkpoint) instead of a raw state-dict mismatch dump.

    Args:
        ckpt_path: the ``ckpt_path`` of the run (a file: ``fewshot.run.checks`` refuses Lightning's names).
        method: the method built from the run's config.
        model_config: the run's resolved ``model`` config.
    """
    checkpoint = read_checkpoint(ckpt_path)
    stored = dict(checkpoint[CONFIG_KEY].get("model") or {})
    trained, configured = (
        current_target(t) if isinstance(t, str) else t for t in (stored.get("_target_"), model_config.get("_target_"))
    )
    fix = (
        "Pass the model=/experiment= settings the checkpoint was trained with "
        "(`fewshot.run.checkpoint.checkpoint_config(path).model` shows them), or a checkpoint of the configured method."
    )
    if trained != configured:
        raise ValueError(f"Checkpoint {ckpt_path} holds a {trained} but the config builds a {configured}. {fix}")
    problems = state_dict_mismatches(checkpoint["state_dict"], method.state_dict())
    if problems:
        differing = config_differences(stored, model_config)
        settings = f" Model settings that differ: {'; '.join(differing[:5])}." if differing else ""
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ValueError(
            f"Checkpoint {ckpt_path} does not fit the configured {configured}: "
            f"{'; '.join(problems[:3])}{more}.{settings} {fix}"
        )


def current_target(target: str) -> str:
    """``target`` (a dotted ``_target_``) with a module that has moved replaced by its new path."""
    module, dot, name = target.rpartition(".")
    return f"{MOVED_MODULES.get(module, module)}{dot}{name}"


def current_targets(config: Any) -> Any:
    """A stored config (nested dicts and lists) with every ``_target_`` naming a moved module renamed."""
    if isinstance(config, Mapping):
        return {
            key: current_target(value) if key == "_target_" and isinstance(value, str) else current_targets(value)
            for key, value in config.items()
        }
    if isinstance(config, list):
        return [current_targets(value) for value in config]
    return config


def state_dict_mismatches(saved: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """What stops ``saved`` from loading strictly into a module whose state dict is ``expected``."""
    problems = []
    for key, value in expected.items():
        if key not in saved:
            problems.append(f"{key} is missing from the checkpoint")
            continue
        # tensors have shapes; extra state (plain Python objects) is not compared
        have, want = getattr(saved[key], "shape", None), getattr(value, "shape", None)
        if have is not None and want is not None and tuple(have) != tuple(want):
            problems.append(f"{key} has shape {list(have)} in the checkpoint but {list(want)} in the method")
    return problems + [f"{k} is in the checkpoint but not in the method" for k in saved if k not in expected]


def config_differences(trained: Mapping[str, Any], configured: Mapping[str, Any], prefix: str = "model") -> list[str]:
    """``"model.<key>: <trained> (checkpoint) vs <configured> (config)"`` for every differing leaf."""
    differences = []
    for key in sorted(set(trained) | set(configured), key=str):
        a, b = trained.get(key), configured.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            differences += config_differences(a, b, f"{prefix}.{key}")
        elif a != b:
            differences.append(f"{prefix}.{key}: {a} (checkpoint) vs {b} (config)")
    return differences


def load(ckpt_path: str | os.PathLike, map_location: str | torch.device = "cpu") -> pl.LightningModule:
    """Rebuild a trained method from its checkpoint, ready for ``method(episode)`` in eval mode."""
    checkpoint = read_checkpoint(ckpt_path)
    config = OmegaConf.create(checkpoint[CONFIG_KEY])
    method = instantiate(config.model)
    missing, unexpected = method.load_state_dict(checkpoint["state_dict"], strict=False)
    if missing or unexpected:
        raise ValueError(
            f"Checkpoint {ckpt_path} does not match the method {type(method).__name__} it names: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}."
        )
    method.on_load_checkpoint(checkpoint)  # what a method keeps beside its weights
    return method.to(map_location).eval()


def resumable_checkpoint(last: Path) -> Path:
    """``last`` when it loads; else an error naming why and the run's earlier checkpoints that load."""
    try:
        load_checkpoint_file(last)
        return last
    except CheckpointError as err:
        problem = err
    usable = []
    for candidate in sorted(last.parent.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True):
        if candidate == last:
            continue
        try:
            load_checkpoint_file(candidate)
        except CheckpointError:
            continue
        usable.append(candidate)
    if usable:
        hint = (
            f"The newest earlier checkpoint of the run that loads is {usable[0]}: resume from it with "
            f"ckpt_path={usable[0]} (and hydra.run.dir={last.parent.parent})"
            + (f"; others: {', '.join(str(p) for p in usable[1:4])}." if len(usable) > 1 else ".")
        )
    else:
        hint = f"No other checkpoint in {last.parent} loads; start the run again without resume=true."
    raise CheckpointError(f"resume=true but {last} cannot be used. {problem} {hint}") from problem


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, writing atomically and loading only tensors and plain data.

    A checkpoint is written to a temporary file in its destination folder, flushed to the
    disk and renamed onto its name, so an interruption or a full disk leaves the previous
    checkpoint intact (Lightning's own writer can truncate it when its temporary folder is on
    another file system). Loading (resume, test, validate) always uses ``weights_only=True``,
    whatever the caller asks: a crafted checkpoint is refused, never executed.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` through a temporary file in the same folder."""
        if "://" in str(path):  # remote storage: Lightning's fsspec writer
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options; got {storage_options!r}.")
        target = Path(path)
        try:
            with temporary_for(target, fsync=True) as tmp, tmp.open("wb") as f:
                torch.save(checkpoint, f)
        except OSError as err:
            raise output_error(err, target) from err

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load with ``weights_only=True`` (a request for ``False`` is refused with a warning)."""
        if weights_only is False:
            log.warning("Loading %s with weights_only=True: fewshot never unpickles arbitrary objects.", path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint {path} not found; pass the path of a .ckpt written by train.py.")
        return load_checkpoint_file(path, map_location)
