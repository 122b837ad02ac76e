"""Refuse a run key of the wrong type before any work: ``'0.1'`` for a number, ``true`` for a count,
``5`` for a list, a string for a list.

The schema is derived, not written: a key under a ``_target_`` node is checked against the
annotation of that constructor's parameter (``data.n_way`` against ``EpisodicDataModule``'s
``n_way: int``, ``trainer.max_epochs`` against Lightning's ``Optional[int]``), and a run key
outside any constructor (``seed``, ``eval.shots``, ``paths.*``) against the type of its default in
the primary config file. Interpolations are checked at the key they come from. Ranges stay with
the constructors (and ``fewshot.run.checks``); this module only judges types.
"""

from __future__ import annotations

import collections.abc
import enum
import functools
import inspect
import json
import numbers
import os
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fewshot.run.config_keys import CONFIG_DIR
from fewshot.run.folder import RunConfigError

# typing's markers for "anything goes" and the origins of list-like and mapping-like annotations
LIST_ORIGINS = (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence, collections.abc.Iterable)
MAPPING_ORIGINS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
UNION_ORIGINS = (typing.Union, types.UnionType)
# the top-level config of a run: where a run key outside any constructor has its typed default
PRIMARY_CONFIG = CONFIG_DIR / "train.yaml"


class ConfigTypeError(RunConfigError):
    """A config value of a type its key cannot take; the message names the key, the value and the fix."""


def is_interpolation(value: Any) -> bool:
    """Whether a raw config value is (or contains) an interpolation, checked where it points."""
    return isinstance(value, str) and "${" in value


def is_number(value: Any) -> bool:
    """A real number that is not a bool (``true`` is no count, though Python's bool is an int)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    """An integer that is not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def plain_matches(value: Any, kind: type) -> bool | None:
    """Whether ``value`` (a YAML scalar, list or mapping) is a ``kind``; None when ``kind`` is a class a
    config can only describe as a nested config node (a ``_target_`` mapping) or cannot judge."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return is_int(value)
    if kind is float or kind is complex or kind is numbers.Real or kind is numbers.Number:
        return is_number(value)
    if kind is str:
        return isinstance(value, str)
    if kind is type(None):
        return value is None
    if kind in LIST_ORIGINS:
        return isinstance(value, list)
    if kind in MAPPING_ORIGINS:
        return isinstance(value, Mapping)
    if isinstance(kind, type) and (issubclass(kind, (str, os.PathLike, enum.Enum)) or kind.__name__ == "device"):
        return isinstance(value, str) or isinstance(value, Mapping)
    if kind is object:
        return True
    if isinstance(kind, type):  # a class (nn.Module, Optimizer, Accelerator, ...): a config node builds it
        return isinstance(value, Mapping)
    return None


def matches(value: Any, annotation: Any) -> bool:
    """Whether a config value can be passed for a parameter annotated ``annotation`` (unknown kinds of
    annotation accept anything: only what is surely wrong is refused)."""
    if annotation is inspect.Parameter.empty or annotation is typing.Any or isinstance(annotation, typing.TypeVar):
        return True
    if isinstance(value, Mapping) and "_target_" in value:  # a config node builds the value
        return True
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in UNION_ORIGINS:
        return any(matches(value, arg) for arg in args)
    if origin is typing.Literal:
        return any(type(value) is type(arg) and value == arg for arg in args)
    if origin is not None and getattr(origin, "__name__", "") == "Annotated":  # pragma: no cover - typing detail
        return matches(value, args[0])
    if origin is collections.abc.Callable:
        return isinstance(value, Mapping) or isinstance(value, str)
    if origin in LIST_ORIGINS:
        if not isinstance(value, list):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        element = args[0] if args else typing.Any
        return all(matches(v, element) for v in value)
    if origin in MAPPING_ORIGINS:
        return isinstance(value, Mapping)
    if origin is type:
        return isinstance(value, str | Mapping)
    if origin is not None:
        return plain_matches(value, origin) is not False
    judged = plain_matches(value, annotation)
    return True if judged is None else judged


def describe(annotation: Any) -> str:
    """A short human description of what an annotation takes: ``an integer``, ``null or a number``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in UNION_ORIGINS:
        parts = [describe(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return f"null or {text}" if type(None) in args else text
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in LIST_ORIGINS:
        plural = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}
        return f"a list of {plural[args[0]]}" if args and args[0] in plural else "a list"
    if origin in MAPPING_ORIGINS:
        return "a mapping"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
        list: "a list",
    }
    if annotation in names:
        return names[annotation]
    return f"a {getattr(annotation, '__name__', str(annotation))} config (_target_: ...)"


def default_annotation(default: Any) -> Any:
    """The type a key takes, from its default value: ``0`` -> int, ``0.5`` -> float (an int is fine
    too), ``[..]`` -> list; None when the default says nothing (null, interpolation)."""
    if default is None or is_interpolation(default):
        return None
    if isinstance(default, bool):
        return bool
    if is_int(default):
        return int
    if is_number(default):
        return float
    if isinstance(default, str):
        return str
    if isinstance(default, list):
        return list
    if isinstance(default, Mapping):
        return dict
    return None


@functools.cache
def parameters_of(target_name: str) -> dict[str, inspect.Parameter]:
    """The named parameters of a ``_target_`` (a dotted name), annotations resolved."""
    from hydra.utils import get_object

    try:
        target = get_object(target_name)
    except (ImportError, AttributeError, ValueError):
        return {}
    functions = (
        [klass.__init__ for klass in target.__mro__ if "__init__" in vars(klass)]
        if inspect.isclass(target)
        else [target]
    )
    parameters: dict[str, inspect.Parameter] = {}
    for function in functions:  # a subclass's **kwargs go on to its base class's constructor
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):
            break
        for name, parameter in signature.parameters.items():
            if parameter.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) or name == "self":
                continue
            parameters.setdefault(name, parameter.replace(annotation=resolved(parameter.annotation, function)))
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
            break
    return parameters


def resolved(annotation: Any, function: Any) -> Any:
    """An annotation with a string (``from __future__ import annotations``) evaluated in the module of
    ``function``; ``empty`` (not judged) when it names what is only imported for type checkers."""
    if not isinstance(annotation, str):
        return annotation
    namespace = {**vars(typing), **getattr(inspect.unwrap(function), "__globals__", {})}
    try:
        return eval(annotation, namespace)  # noqa: S307 - an annotation of our own or a library's code
    except Exception:  # noqa: BLE001 - a name imported under TYPE_CHECKING only
        return inspect.Parameter.empty


def leaves(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any], str, Any]]:
    """``(dotted key, parent node, name, raw value)`` for every key of a nested mapping (lists are values)."""
    for name, value in tree.items():
        key = f"{prefix}{name}"
        yield key, tree, str(name), value
        if isinstance(value, Mapping):
            yield from leaves(value, f"{key}.")


@functools.cache
def primary_defaults() -> dict[str, Any]:
    """The run keys of the primary config file (``conf/train.yaml``) with their default values."""
    if not PRIMARY_CONFIG.is_file():
        return {}
    raw = OmegaConf.to_container(OmegaConf.load(PRIMARY_CONFIG), resolve=False)
    raw.pop("defaults", None)
    return raw


def example(annotation: Any, default: Any) -> str:
    """What to write on the command line for a fix: the default if it has the right type, else a sample."""
    if default is not inspect.Parameter.empty and default is not None and matches(default, annotation):
        return OmegaConf.to_yaml({"v": default}).strip().removeprefix("v: ").replace("\n", " ")
    samples = {bool: "true", int: "3", float: "0.5", str: "name"}
    origin = typing.get_origin(annotation)
    if origin in UNION_ORIGINS:
        choices = [a for a in typing.get_args(annotation) if a is not type(None)]
        return example(choices[0], inspect.Parameter.empty) if choices else "null"
    if origin is typing.Literal:
        return str(typing.get_args(annotation)[0])
    if origin in LIST_ORIGINS or annotation is list:
        return "[1,2]"
    return samples.get(annotation, "<value>")


def wrong_types(cfg: DictConfig | Mapping[str, Any]) -> list[str]:
    """One message per key whose value its constructor parameter (or its default) cannot take."""
    raw = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else dict(cfg)
    raw.pop("hydra", None)
    defaults = primary_defaults()
    problems = []
    for key, parent, name, value in leaves(raw):
        if name.startswith("_") or is_interpolation(value):
            continue
        if "_target_" in parent:
            parameter = parameters_of(str(parent["_target_"])).get(name)
            if parameter is None:
                continue
            annotation, default = parameter.annotation, parameter.default
        elif "." not in key and name in defaults:
            # a top-level key left null by default takes a string (ckpt_path, variant: a path or a name)
            default = defaults[name]
            annotation = str | None if default is None else default_annotation(default)
            if annotation is None:
                continue
        else:
            continue
        if not matches(value, annotation):
            problems.append(message(key, value, annotation, default))
    return problems


def message(key: str, value: Any, annotation: Any, default: Any) -> str:
    """The one-line error for a key of the wrong type."""
    kinds = {bool: "a bool", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}
    kind = kinds.get(type(value), f"a {type(value).__name__}")
    plain = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    # shown in JSON's syntax (a message, not a file: NaN is allowed here)
    shown = json.JSONEncoder(default=str).encode(plain).replace("NaN", "nan")
    quoted = f"'{value}'" if isinstance(value, str) else shown
    return f"{key} must be {describe(annotation)}, got {quoted} ({kind}); set e.g. {key}={example(annotation, default)}"


def check_value_types(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise ConfigTypeError naming every run key whose value has the wrong type (before any work)."""
    problems = wrong_types(cfg)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ConfigTypeError("; ".join(problems[:3]) + more + ".")
