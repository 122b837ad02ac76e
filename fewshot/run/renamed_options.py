"""The one mapping of renamed method options: old ``model.<key>`` names and values -> the shared ones.

Stored configs (checkpoints, and any results file read through :func:`current_options`) keep the
names they were written with and are mapped when read; a run whose command line still uses an old
key or value stops with one line naming the new key and value (:func:`check_renamed_overrides`,
before Hydra composes the config). The shared options: docs/configuration.md, Shared options.
This module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class CopyOf:
    """A mapped value that takes the new value of another key of the same node (``default`` when absent)."""

    key: str
    default: str


@dataclass(frozen=True)
class Renamed:
    """What an old key became: the new key(s), the new value of each old value (others stay), and keys that
    came with the rename, with the value that does what the method did before they existed."""

    new: tuple[str, ...]
    values: Mapping[Any, Any] = field(default_factory=dict)
    adds: Mapping[str, Any] = field(default_factory=dict)


MAML = "fewshot.methods.maml.MAML"
REPTILE = "fewshot.methods.reptile.Reptile"
MATCHING_NET = "fewshot.methods.matchingnet.MatchingNetwork"
META_LSTM = "fewshot.methods.meta_lstm.MetaLSTM"
BASELINE_FINETUNE = "fewshot.methods.baseline_finetune.BaselineFinetune"

# model._target_ (its current path, fewshot.run.checkpoint.MOVED_MODULES) -> old key -> what it became
RENAMED_OPTIONS: dict[str, dict[str, Renamed]] = {
    MAML: {"bn_mode": Renamed(("train_bn", "eval_bn"), {"transductive": "transductive"})},
    REPTILE: {
        "bn_mode": Renamed(
            ("eval_bn",),
            {"transductive": "transductive", "non_transductive": "support_plus_query"},
            adds={"train_bn": "transductive"},  # Reptile's training queries were always one batch
        )
    },
    MATCHING_NET: {
        "bn_mode": Renamed(("train_bn",), {"joint": "joint", "separate": "transductive"}),
        # episode: each batch's own statistics, batched as in training
        "eval_bn_stats": Renamed(("eval_bn",), {"running": "running", "episode": CopyOf("train_bn", "joint")}),
        "fce_clip_norm": Renamed(("grad_clip_norm",)),
        "fce_clip_support_lstm": Renamed(("grad_clip_params",), {False: "attention_lstm", True: "fce_lstms"}),
    },
    META_LSTM: {
        "n_steps": Renamed(("inner_steps",)),
        "train_bn": Renamed(("train_bn",), {"batch": "transductive", "support": "support"}),
        "eval_bn": Renamed(("eval_bn",), {"batch": "transductive", "support": "support"}),
    },
    BASELINE_FINETUNE: {
        "finetune_lr": Renamed(("inner_lr",)),
        "finetune_decay": Renamed(("inner_lr_decay",)),
        "finetune_updates": Renamed(("eval_inner_steps",)),
    },
}
# old keys that no method has any more (an old value of a kept key is told apart by its value)
OLD_KEYS = frozenset(old for renames in RENAMED_OPTIONS.values() for old, to in renames.items() if old not in to.new)


class RenamedOptionError(ValueError):
    """A command line that sets a method option by its old name or value."""


def new_value(rule: Renamed, value: Any) -> Any:
    """``value`` as ``rule`` maps it (unlisted and unhashable values stay as they are)."""
    try:
        return rule.values.get(value, value)
    except TypeError:  # a list or mapping: no renamed value is one
        return value


def current_options(model: Mapping[str, Any]) -> dict[str, Any]:
    """A model config node with every old key and value of its ``_target_`` mapped to the shared ones."""
    renames = RENAMED_OPTIONS.get(str(model.get("_target_")), {})
    mapped: dict[str, Any] = {}
    for key, value in model.items():
        rule = renames.get(key)
        for new_key in rule.new if rule else (key,):
            mapped[new_key] = new_value(rule, value) if rule else value
        for added, default in rule.adds.items() if rule else ():
            mapped.setdefault(added, default)
    for key, value in mapped.items():
        if isinstance(value, CopyOf):
            found = mapped.get(value.key, value.default)
            mapped[key] = found if not isinstance(found, CopyOf) else value.default
    return mapped


def current_config(config: Any) -> Any:
    """A stored run config (nested dicts) with its ``model`` node's old option names mapped."""
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        return config
    return {**config, "model": current_options(config["model"])}


def model_overrides(overrides: Sequence[str]) -> list[tuple[str, Any]]:
    """``(key, value)`` of every ``model.<key>=<value>`` override (``+``/``++``/``~`` prefixes allowed) of one
    level below ``model``; a value Hydra cannot parse stays a string."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    found = []
    for text in overrides:
        key, sep, raw = text.lstrip("+~").partition("=")
        parts = key.split(".")
        if not sep or len(parts) != 2 or parts[0] != "model":
            continue
        try:
            value = parser.parse_override(text).value()
        except Exception:  # noqa: BLE001 - a sweep or a syntax Hydra reports itself: keep the text
            value = raw
        found.append((parts[1], value))
    return found


def describe(target: str, key: str, model: Mapping[str, Any]) -> str:
    """What to write instead of ``model.<key>`` (its value in ``model``) for the method ``target``."""
    rule = RENAMED_OPTIONS[target][key]
    mapped = current_options({**model, "_target_": target})
    written = " ".join(f"model.{new}={format_value(mapped[new])}" for new in rule.new)
    return f"{written} ({target.rpartition('.')[2]}{old_values(rule)})"


def old_values(rule: Renamed) -> str:
    """``", old values a -> b, ..."`` of a rule that renames values (empty when it renames none)."""
    shown = [f"{format_value(old)} -> {show(new)}" for old, new in rule.values.items()]
    return f", old values {', '.join(shown)}" if shown else ""


def show(value: Any) -> str:
    """A mapped value as the error message names it."""
    return f"the model.{value.key} value" if isinstance(value, CopyOf) else format_value(value)


def format_value(value: Any) -> str:
    """A value as written on the command line."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def check_renamed_overrides(
    overrides: Sequence[str], composed_model: Callable[[], Mapping[str, Any] | None] = lambda: None
) -> None:
    """Raise a one-line RenamedOptionError for a command-line ``model.<key>`` that uses an old name or value.

    Args:
        overrides: the command line's overrides.
        composed_model: the run's composed ``model`` node without the old overrides (None when it does not
            compose); called only when an old name or value is found, to name that method's new keys.
    """
    given = model_overrides(overrides)
    old = [(k, v) for k, v in given if k in OLD_KEYS or any(renamed_value(t, k, v) for t in RENAMED_OPTIONS)]
    if not old:
        return
    model = {**(composed_model() or {}), **dict(old)}
    target = str(model.get("_target_"))
    advice = []
    for key, value in old:
        if key in RENAMED_OPTIONS.get(target, {}):
            advice.append(f"model.{key}={format_value(value)} is now {describe(target, key, model)}")
        elif key in OLD_KEYS:
            every = "; ".join(
                f"{t.rpartition('.')[2]}: model.{' and model.'.join(renames[key].new)}{old_values(renames[key])}"
                for t, renames in RENAMED_OPTIONS.items()
                if key in renames
            )
            advice.append(f"model.{key} was renamed ({every})")
    if advice:
        raise RenamedOptionError(
            f"{'. '.join(advice)}. The shared option names and values: docs/configuration.md, Shared options."
        )


def renamed_value(target: str, key: str, value: Any) -> bool:
    """Whether ``value`` is an old value of a key ``target`` kept under its name."""
    rule = RENAMED_OPTIONS[target].get(key)
    return rule is not None and key in rule.new and new_value(rule, value) != value


__all__ = [
    "OLD_KEYS",
    "RENAMED_OPTIONS",
    "CopyOf",
    "RenamedOptionError",
    "Renamed",
    "check_renamed_overrides",
    "current_config",
    "current_options",
]
