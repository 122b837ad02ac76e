"""The preset guard: every value of every composed preset, compared with a committed snapshot.

Each preset (``conf/experiment/<dataset>/<name>.yaml``) is composed as ``train.py`` composes it,
resolved, and flattened to dotted keys; the keys under the ``unguarded`` prefixes of
``preset_sources.yaml`` (where a run writes, what it prints) are left out, and everything else
is guarded: a change that reaches a preset, in its own file or in a default it inherits, differs
from ``preset_snapshots/<dataset>/<name>.yaml`` until the snapshot is rewritten on purpose with
``python -m tests.training.update_preset_snapshot``. Every guarded value has a source, given by
the rules of ``preset_sources.yaml``.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from fewshot.run.resolvers import register_resolvers

register_resolvers()

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = PROJECT_ROOT / "conf"
HERE = Path(__file__).resolve().parent
SNAPSHOT_DIR = HERE / "preset_snapshots"
SOURCES_FILE = HERE / "preset_sources.yaml"
UPDATE_COMMAND = "python -m tests.training.update_preset_snapshot"

Flat = dict[str, Any]


def preset_names(config_dir: Path = CONFIG_DIR) -> list[str]:
    """``<dataset>/<name>`` of every preset under ``conf/experiment``."""
    root = Path(config_dir) / "experiment"
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def flatten(node: Any, prefix: str = "") -> Flat:
    """Nested mappings as ``{"a.b.c": leaf}``; lists and empty mappings are leaves."""
    if not isinstance(node, Mapping) or not node:
        return {prefix: node}
    flat: Flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_under(key: str, prefix: str) -> bool:
    """Whether the dotted ``key`` is ``prefix`` or lies under it (``a.b`` is under ``a``, ``ab`` is not)."""
    return key == prefix or key.startswith(prefix + ".")


def load_yaml(path: Path) -> Any:
    """A YAML file's content."""
    return yaml.safe_load(path.read_text())


@functools.cache
def guard_data() -> dict[str, Any]:
    """The content of ``preset_sources.yaml``, read once (do not mutate)."""
    return load_yaml(SOURCES_FILE)


def unguarded_prefixes() -> dict[str, str]:
    """The key prefixes the guard leaves out, with why each cannot change a result."""
    return dict(guard_data()["unguarded"])


def guarded(flat: Flat, unguarded: Iterable[str]) -> Flat:
    """``flat`` without the keys under any of the ``unguarded`` prefixes."""
    prefixes = list(unguarded)
    return {k: v for k, v in flat.items() if not any(is_under(k, p) for p in prefixes)}


def compose_flats(
    presets: Iterable[str], overrides: Iterable[str] = (), config_dir: Path = CONFIG_DIR
) -> dict[str, Flat]:
    """Every resolved value of each preset composed as train.py does (``paths.*`` as placeholders
    such as ``<paths.output_dir>``, so no value depends on the machine), flattened; Hydra is
    initialised once for all of them."""
    flats = {}
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        for preset in presets:
            cfg = compose("train", overrides=[f"experiment={preset}", *overrides], return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg["hydra"]
                for key in list(cfg.paths):
                    cfg.paths[key] = f"<paths.{key}>"
            flats[preset] = flatten(OmegaConf.to_container(cfg, resolve=True))
    GlobalHydra.instance().clear()
    return flats


def guarded_values(preset: str, overrides: Iterable[str] = (), config_dir: Path = CONFIG_DIR) -> Flat:
    """The guarded values of ``preset`` (composed with ``overrides`` from ``config_dir``)."""
    return guarded(compose_flats([preset], overrides, config_dir)[preset], unguarded_prefixes())


@functools.cache
def all_composed() -> dict[str, Flat]:
    """``compose_flats`` of every preset of the checkout's conf/, once per session (do not mutate)."""
    return compose_flats(preset_names())


def composed(preset: str) -> Flat:
    """Every value of ``preset`` in the checkout's conf/, composed once per session (do not mutate)."""
    return all_composed()[preset]


def current_values(preset: str) -> Flat:
    """The guarded values of ``preset`` in the checkout's conf/ (a fresh dict)."""
    return guarded(composed(preset), unguarded_prefixes())


_MISSING = object()


def show(value: Any) -> str:
    """A value as the snapshot writes it, on one line."""
    if value is _MISSING:
        return "(absent)"
    return yaml.safe_dump([value], default_flow_style=True, width=10_000, allow_unicode=True).strip()[1:-1]


def snapshot_path(preset: str) -> Path:
    """The committed snapshot file of ``preset``."""
    return SNAPSHOT_DIR / f"{preset}.yaml"


def snapshot_text(preset: str, values: Flat) -> str:
    """A snapshot file: a header, then one ``key: value`` line per guarded key, sorted (values in YAML flow style)."""
    header = f"# {preset}: every guarded value of the composed preset (tests/training/preset_guard.py).\n"
    header += f"# Generated: rewrite with `{UPDATE_COMMAND}`, never by hand.\n"
    return header + "".join(f"{show(key)}: {show(values[key])}\n" for key in sorted(values))


def read_snapshot(preset: str) -> Flat | None:
    """The snapshot of ``preset``, or None when it has none."""
    path = snapshot_path(preset)
    return load_yaml(path) if path.exists() else None


def write_snapshot(preset: str, values: Flat) -> bool:
    """Write ``preset``'s snapshot (temporary file and rename); True when its content changed."""
    path = snapshot_path(preset)
    text = snapshot_text(preset, values)
    if path.exists() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".yaml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return True


@dataclass(frozen=True)
class Change:
    """One guarded key whose value differs from the snapshot."""

    preset: str
    key: str
    old: Any
    new: Any

    def __str__(self) -> str:
        return f"{self.preset}: {self.key}: {show(self.old)} -> {show(self.new)}"


def changes(preset: str, expected: Flat, actual: Flat) -> list[Change]:
    """Every key whose value differs between ``expected`` (the snapshot) and ``actual``, a key
    present in only one of them included; types count (1 is not 1.0 nor True)."""
    keys = sorted(set(expected) | set(actual))
    return [
        Change(preset, k, expected.get(k, _MISSING), actual.get(k, _MISSING))
        for k in keys
        if not same(expected.get(k, _MISSING), actual.get(k, _MISSING))
    ]


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types, recursively (so ``1 != 1.0`` and ``1 != True`` here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


@dataclass(frozen=True)
class Rule:
    """Source ``source`` for the keys ``keys`` of the presets ``presets`` (globs); ``notes`` gives
    what the source says for a key glob (a flag, a line), ``note`` for every key of the rule."""

    presets: tuple[str, ...]
    keys: tuple[str, ...]
    source: str
    note: str | None = None
    notes: tuple[tuple[str, str], ...] = ()

    def matches(self, preset: str, key: str) -> bool:
        """Whether this rule covers ``key`` of ``preset``."""
        return any(fnmatchcase(preset, p) for p in self.presets) and any(fnmatchcase(key, k) for k in self.keys)

    def note_for(self, key: str) -> str | None:
        """The note on ``key``: its own (from ``notes``), else the rule's."""
        return next((note for glob, note in self.notes if fnmatchcase(key, glob)), self.note)


def as_tuple(value: str | list[str]) -> tuple[str, ...]:
    """A glob or a list of globs as a tuple."""
    return (value,) if isinstance(value, str) else tuple(value)


def rule_from(entry: Mapping[str, Any]) -> Rule:
    """A rule of ``preset_sources.yaml``: ``keys`` a glob, a list of globs, or ``{glob: note or null}``."""
    keys = entry["keys"]
    if isinstance(keys, Mapping):
        globs, notes = tuple(keys), tuple((k, n) for k, n in keys.items() if n)
    else:
        globs, notes = as_tuple(keys), ()
    return Rule(as_tuple(entry["presets"]), globs, entry["source"], entry.get("note"), notes)


@functools.cache
def source_map() -> tuple[dict[str, str], tuple[Rule, ...]]:
    """The named sources and the rules of ``preset_sources.yaml``, in file order."""
    data = guard_data()
    return dict(data["sources"]), tuple(rule_from(entry) for entry in data["rules"])


def source_rule(preset: str, key: str) -> Rule | None:
    """The rule that sources ``key`` of ``preset``: the last one that matches (later rules are
    more specific), or None."""
    _, rules = source_map()
    return next((r for r in reversed(rules) if r.matches(preset, key)), None)


def drift_message(preset: str, found: list[Change]) -> str:
    """The failure message of a preset that differs from its snapshot: each change with its source."""
    lines = [f"{preset} differs from its snapshot {snapshot_path(preset).relative_to(PROJECT_ROOT)}:"]
    lines += [f"  {change}    [source: {source_of(preset, change.key) or 'none'}]" for change in found]
    lines.append(
        f"If the change is meant: `{UPDATE_COMMAND}`, review the snapshot diff, and give a new key its "
        f"source in {SOURCES_FILE.relative_to(PROJECT_ROOT)}."
    )
    return "\n".join(lines)


def source_of(preset: str, key: str) -> str | None:
    """The source text of ``key`` of ``preset`` (the named source, then the note), or None."""
    rule = source_rule(preset, key)
    if rule is None:
        return None
    names, _ = source_map()
    text, note = names.get(rule.source, rule.source), rule.note_for(key)
    return f"{text}: {note}" if note else text
