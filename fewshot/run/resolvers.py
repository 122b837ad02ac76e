"""The project's custom OmegaConf resolvers, registered once on import (train.py and the tests import it)."""

from __future__ import annotations

from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# the config group whose choice names the run (conf/experiment/<dataset>/<preset>.yaml)
EXPERIMENT_GROUP = "experiment"
TASK_NAME_RESOLVER = "fewshot.task_name"
MONITOR_MODE_RESOLVER = "fewshot.monitor_mode"


def task_name_of(experiment: str | None, default: str) -> str:
    """The run name of an experiment choice: ``omniglot/meta_lstm_5w1s`` -> ``omniglot_meta_lstm_5w1s``;
    ``default`` when no experiment is chosen."""
    return experiment.replace("/", "_") if experiment else default


def group_choices(root: DictConfig) -> Any:
    """Hydra's group choices of the run: from the config's own ``hydra`` node while Hydra
    launches (run and sweep folders), else from the job's HydraConfig."""
    if "hydra" in root:
        return root.hydra.runtime.choices
    if HydraConfig.initialized():
        return HydraConfig.get().runtime.choices
    raise ValueError(
        "task_name is derived from the chosen experiment (hydra.runtime.choices), but this config was "
        "composed without Hydra's node: compose it with return_hydra_config=True (and "
        "HydraConfig.instance().set_config(cfg), as @hydra.main does), or set task_name explicitly."
    )


def experiment_task_name(default: str, *, _root_: DictConfig) -> str:
    """``${fewshot.task_name:<default>}``: the run name derived from the chosen experiment."""
    return task_name_of(group_choices(_root_).get(EXPERIMENT_GROUP), default)


def monitor_mode(monitor: str) -> str:
    """``${fewshot.monitor_mode:<monitor>}``: ``max`` for ``val/acc``, ``min`` for ``val/loss`` (the
    callbacks' ``mode`` for the run's ``monitor``)."""
    from fewshot.evaluation.scoring import MONITOR_MODES

    if monitor not in MONITOR_MODES:
        raise ValueError(f"monitor must be one of {list(MONITOR_MODES)}, got {monitor!r}; set e.g. monitor=val/acc.")
    return MONITOR_MODES[monitor]


def register_resolvers() -> None:
    """Register the project's resolvers with OmegaConf (once; a second call does nothing)."""
    if not OmegaConf.has_resolver(TASK_NAME_RESOLVER):
        OmegaConf.register_new_resolver(TASK_NAME_RESOLVER, experiment_task_name)
    if not OmegaConf.has_resolver(MONITOR_MODE_RESOLVER):
        OmegaConf.register_new_resolver(MONITOR_MODE_RESOLVER, monitor_mode)


register_resolvers()
