"""Refuse config keys that nothing reads: a misspelled key in a preset or on the command line.

Hydra already refuses an unknown command-line key without ``+``, but a preset file
(``# @package _global_``: ``experiment=``, ``debug=``, ``hparams_search=``) may add any key, and a
typo there (``eval.shot``, ``nonfinite_los``) used to leave the default in force without a word.
The composed config is compared with a reference composed from the same group choices (the same
``data=``, ``model=``, ...) without the presets, plus the user's explicit ``+key``/``++key``
additions: every key of the run must exist in the reference, or be a constructor parameter of
the ``_target_`` of the node that holds it (e.g. ``trainer.fast_dev_run``). This module imports
no torch, so a typo fails in a second.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# the run configs, shipped in the package (Hydra's config root; `conf` at the top of a checkout links here)
CONFIG_DIR = Path(__file__).parent.parent / "conf"
# config groups whose options are presets over the defaults (not part of the defaults tree)
PRESET_GROUPS = ("experiment", "hparams_search", "debug")


class UnknownConfigKeyError(ValueError):
    """A key in the composed config that no default defines and no constructor takes."""


def leaf_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every key of a (nested) mapping; lists are values, not descended into."""
    if not isinstance(tree, Mapping):
        return
    for key, value in tree.items():
        path = f"{prefix}{key}"
        yield path
        yield from leaf_keys(value, f"{path}.")


def reference_overrides(choices: Mapping[str, str | None], task_overrides: Iterable[str]) -> list[str]:
    """The overrides that compose the run's defaults tree: its group choices minus the presets
    and Hydra's own groups, plus the user's explicit ``+key=``/``++key=`` additions."""
    groups = [
        f"{group}={choice}"
        for group, choice in choices.items()
        if choice is not None and group not in PRESET_GROUPS and group != "hydra" and not group.startswith("hydra/")
    ]
    added = [o for o in task_overrides if o.startswith("+") and o.lstrip("+").split("=", 1)[0] not in choices]
    return groups + added


def target_parameters(node: Any) -> set[str]:
    """Named constructor parameters of a config node's ``_target_`` (empty when it has none), with
    those a subclass passes on through ``**kwargs`` to its base class."""
    if not isinstance(node, Mapping) or "_target_" not in node:
        return set()
    from fewshot.run.config_types import parameters_of

    return set(parameters_of(str(node["_target_"])))


def node_at(tree: Mapping[str, Any], path: str) -> Any:
    """The value at a dotted path of a nested mapping (None when absent)."""
    node: Any = tree
    for part in path.split(".") if path else []:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def fills_a_null(path: str, reference: Mapping[str, Any], known: set[str]) -> bool:
    """Whether ``path`` lies under a key the defaults leave null: a slot for a config object
    (e.g. ``model.scheduler: null`` filled with a ``_target_`` node by a preset)."""
    parts = path.split(".")
    for depth in range(1, len(parts)):
        ancestor = ".".join(parts[:depth])
        if node_at(reference, ancestor) is None and ancestor in known:
            return True
    return False


def unknown_keys(run: Mapping[str, Any], reference: Mapping[str, Any]) -> list[tuple[str, str | None]]:
    """``(key, closest valid key)`` for every key of ``run`` that ``reference`` lacks and no
    ``_target_`` constructor takes (a subtree in a slot the defaults leave null is allowed);
    only the top of an unknown subtree is reported."""
    known = set(leaf_keys(reference))
    found: list[tuple[str, str | None]] = []
    for path in leaf_keys(run):
        if path in known or any(path.startswith(f"{bad}.") for bad, _ in found) or fills_a_null(path, reference, known):
            continue
        parent, _, name = path.rpartition(".")
        if name in target_parameters(node_at(run, parent)):
            continue
        close = renamed_to(path, node_at(run, parent)) or difflib.get_close_matches(
            path, sorted(known), n=1, cutoff=0.6
        )
        found.append((path, close[0] if close else None))
    return found


def renamed_to(path: str, parent: Any) -> list[str]:
    """``["<new key(s)>"]`` when ``path`` is an old name of an option of its parent's ``_target_``, else []."""
    from fewshot.run.renamed_options import RENAMED_OPTIONS

    stem, _, name = path.rpartition(".")
    target = parent.get("_target_") if isinstance(parent, Mapping) else None
    rule = RENAMED_OPTIONS.get(str(target), {}).get(name)
    return [" and ".join(f"{stem}.{new}" for new in rule.new)] if rule else []


def describe_unknown(found: list[tuple[str, str | None]]) -> str:
    """One error message naming each unknown key, its closest valid key and the fix."""
    parts = [f"'{key}'" + (f" (did you mean '{close}'?)" if close else "") for key, close in found]
    return (
        f"Unknown config key{'s' if len(found) > 1 else ''} {', '.join(parts)}: no default config defines "
        f"{'them' if len(found) > 1 else 'it'}, so it would be ignored. Fix the spelling in the preset "
        "(conf/experiment, conf/debug, conf/hparams_search) or override, or add a new key deliberately "
        "on the command line with +key=value."
    )


def check_known_keys(
    cfg: DictConfig, choices: Mapping[str, str | None], task_overrides: Iterable[str], config_name: str = "train"
) -> None:
    """Raise UnknownConfigKeyError when ``cfg`` has keys outside its defaults tree.

    Must run inside an initialised Hydra (``@hydra.main`` or ``initialize_config_dir``).
    """
    from hydra import compose

    reference = compose(config_name=config_name, overrides=reference_overrides(choices, task_overrides))
    run = OmegaConf.to_container(cfg, resolve=False)
    run.pop("hydra", None)  # Hydra's own node (present when composed with return_hydra_config)
    found = unknown_keys(run, OmegaConf.to_container(reference, resolve=False))
    if found:
        raise UnknownConfigKeyError(describe_unknown(found))
