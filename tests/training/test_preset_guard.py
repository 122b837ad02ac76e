"""Every value of every preset guarded: equal to its committed snapshot, and with a source.

A change that reaches a preset (its own file, a model, data, backbone, trainer or callback default
it inherits) fails ``test_preset_matches_its_snapshot`` naming the preset, the key, the old and
the new value, until the snapshot is rewritten on purpose (``python -m
tests.training.update_preset_snapshot``). The sources are the rules of
``tests/training/preset_sources.yaml``; the machinery is ``tests/training/preset_guard.py``.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

from tests.training.preset_guard import (
    CONFIG_DIR,
    SNAPSHOT_DIR,
    Change,
    changes,
    compose_flats,
    composed,
    current_values,
    drift_message,
    flatten,
    guarded,
    guarded_values,
    is_under,
    preset_names,
    read_snapshot,
    rule_from,
    same,
    show,
    snapshot_path,
    source_map,
    source_of,
    source_rule,
    unguarded_prefixes,
)

PRESETS = preset_names()
PAPER_PRESETS = [p for p in PRESETS if p.split("/")[0] in ("miniimagenet", "omniglot")]


def all_values() -> dict[str, dict[str, Any]]:
    """The guarded values of every preset (composed once per session)."""
    return {preset: current_values(preset) for preset in PRESETS}


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_matches_its_snapshot(preset: str):
    snapshot = read_snapshot(preset)
    assert snapshot is not None, f"{preset} has no snapshot {snapshot_path(preset)}: run the update command"
    found = changes(preset, snapshot, current_values(preset))
    assert not found, drift_message(preset, found)


def test_every_paper_preset_is_guarded():
    """Both datasets' presets are found (a moved conf/ would otherwise guard nothing) and every
    snapshot belongs to a preset."""
    datasets = {p.split("/")[0] for p in PAPER_PRESETS}
    assert datasets == {"miniimagenet", "omniglot"} and len(PAPER_PRESETS) >= 60, PAPER_PRESETS
    stale = sorted(
        str(p.relative_to(SNAPSHOT_DIR))
        for p in SNAPSHOT_DIR.rglob("*.yaml")
        if p.with_suffix("") not in {SNAPSHOT_DIR / n for n in PRESETS}
    )
    assert not stale, f"snapshots of presets that do not exist (run the update command): {stale}"


def test_every_guarded_value_has_a_source():
    unsourced = [f"{p}: {k}" for p, values in all_values().items() for k in values if source_rule(p, k) is None]
    assert not unsourced, (
        "guarded values without a source (add a rule to tests/training/preset_sources.yaml: the paper "
        "section, the official code's file, or OURS with its Deviations row):\n" + "\n".join(unsourced)
    )


def test_every_rule_cites_a_named_source_and_decides_some_value():
    names, rules = source_map()
    undefined = [r for r in rules if r.source not in names]
    assert not undefined, f"rules citing a source not under `sources:`: {undefined}"
    deciding = {id(source_rule(p, k)) for p, values in all_values().items() for k in values}
    dead = [r for r in rules if id(r) not in deciding]
    assert not dead, f"rules that decide no value's source (a typo, or overridden by later rules): {dead}"


def too_wide(glob: str) -> bool:
    """Whether a key glob's wildcard comes before its second segment (``*``, ``model.*``, ``*.lr``)."""
    literal = re.split(r"[*?\[]", glob)[0]
    return literal != glob and len([s for s in literal.split(".") if s]) < 2


def test_no_rule_sources_keys_wholesale():
    """A key glob names at least two segments (``callbacks.last_checkpoint.*``), so a new key of
    ``model`` or ``data`` gets no source by accident."""
    assert [g for g in ("*", "model.*", "*.lr", "data.train_n_*", "callbacks.x.*", "model.lr") if too_wide(g)] == [
        "*",
        "model.*",
        "*.lr",
    ]
    _, rules = source_map()
    wholesale = [(r.presets, k) for r in rules for k in r.keys if too_wide(k)]
    assert not wholesale, f"key globs too wide to source on purpose: {wholesale}"


def test_every_unguarded_prefix_hides_some_key():
    """Each prefix left out of the guard still names keys, and the list stays short (each hides keys)."""
    assert len(unguarded_prefixes()) <= 15, "the unguarded list is meant to be short: guard what may change results"
    every_key = {k for p in PRESETS for k in composed(p)}
    unused = [prefix for prefix in unguarded_prefixes() if not any(is_under(k, prefix) for k in every_key)]
    assert not unused, f"unguarded prefixes that match no key (remove them): {unused}"


def test_a_source_reads_as_its_rule_says():
    """The named source, then the key's note (or the rule's); the last matching rule wins."""
    finn = "Finn et al. 2017, appendix A.1 (cbfinn/maml main.py)"
    assert source_of("miniimagenet/maml_5w1s", "model.inner_lr") == f"{finn}: update_lr"
    assert (
        source_of("omniglot/fomaml_20w5s", "model.first_order") == f"{finn}: stop_grad (first order as in section 5.2)"
    )
    assert source_of("omniglot/maml_5w1s", "seed") == "ours (docs/reproduce.md, Deviations): a fixed run seed"
    assert source_of("miniimagenet/meta_lstm_5w5s", "model.inner_steps") == (
        "twitter/meta-learning-lstm config/lstm/train-imagenet-5shot.lua: nEpochs[5]"
    )
    assert source_of("miniimagenet/meta_lstm_5w1s", "test_checkpoint").startswith("twitter/meta-learning-lstm config")
    assert source_of("omniglot/meta_lstm_5w1s", "test_checkpoint") == "ours (docs/reproduce.md, Deviations)"
    assert source_of("omniglot/maml_5w1s", "no.such.key") is None


def test_a_rule_reads_keys_as_a_glob_a_list_or_notes():
    one = rule_from({"presets": "*/maml_*", "keys": "model.inner_*", "source": "FINN", "note": "all"})
    listed = rule_from({"presets": ["a/*", "b/*"], "keys": ["x.y", "x.z"], "source": "OURS"})
    noted = rule_from({"presets": "*", "keys": {"x.y": "why y", "x.z": None}, "source": "OURS", "note": "rule"})
    assert one.matches("omniglot/maml_5w1s", "model.inner_lr") and not one.matches(
        "omniglot/fomaml_5w1s", "model.inner_lr"
    )
    assert one.note_for("model.inner_lr") == "all"
    assert listed.keys == ("x.y", "x.z") and listed.matches("b/q", "x.z") and not listed.matches("c/q", "x.z")
    assert (noted.note_for("x.y"), noted.note_for("x.z")) == ("why y", "rule")


def test_flatten_and_compare_keep_every_leaf_and_type():
    assert flatten({"a": {"b": 1, "c": {}, "d": [1, {"e": 2}]}, "f": None}) == {
        "a.b": 1,
        "a.c": {},
        "a.d": [1, {"e": 2}],
        "f": None,
    }
    assert same([1, {"e": 2.0}], [1, {"e": 2.0}]) and not same([1, {"e": 2.0}], [1, {"e": 2}])
    assert not same(1, True) and not same(0, None) and not same(1, 1.0) and not same("1", 1)
    assert is_under("logger.csv.name", "logger") and not is_under("loggers.x", "logger")


# --- the guard catches single-value edits -------------------------------------------------------


def edited(value: Any) -> list[Any]:
    """Values one edit away from ``value``: another value, and the same number as another type."""
    if isinstance(value, bool):
        return [not value, int(value)]
    if isinstance(value, int):
        return [value + 1, float(value)]
    if isinstance(value, float):
        return [value * 2 if value else 0.5, int(value) if value == int(value) else value / 2]
    if isinstance(value, str):
        return [value + "x"]
    if value is None:
        return [0, "null"]
    if isinstance(value, list):
        return [[*value, value[-1] if value else 0], value[:-1] if value else [None]]
    if isinstance(value, dict):
        return [{**value, "x": 1}]
    raise TypeError(f"no edit for {value!r}")


def test_every_single_value_edit_of_every_preset_is_reported_exactly():
    """Each guarded value of each preset, edited alone (to another value, or to the same number
    as another type), is reported as exactly that key with its old and new value; so is each key
    removed, and a key added."""
    checked = 0
    for preset, values in all_values().items():
        for key, old in values.items():
            for new in edited(old):
                assert changes(preset, values, {**values, key: new}) == [Change(preset, key, old, new)], (key, new)
                checked += 1
            removed = changes(preset, values, {k: v for k, v in values.items() if k != key})
            assert [(c.key, c.old, show(c.new)) for c in removed] == [(key, old, "(absent)")]
        added = changes(preset, values, {**values, "model.new_key": 1})
        assert [(c.key, show(c.old), c.new) for c in added] == [("model.new_key", "(absent)", 1)]
    assert checked > 5000, checked


# the audit's edits (issue 35, item 15), each of a key the old per-preset pin lists left out
AUDIT_EDITS = [
    ("miniimagenet/maml_5w1s", "model.first_order=true", "miniimagenet/maml_5w1s: model.first_order: false -> true"),
    (
        "miniimagenet/matchingnet_fce_5w1s",
        "model.fce=false",
        "miniimagenet/matchingnet_fce_5w1s: model.fce: true -> false",
    ),
    ("omniglot/meta_lstm_5w1s", "trainer.max_steps=1000", "omniglot/meta_lstm_5w1s: trainer.max_steps: -1 -> 1000"),
    (
        "miniimagenet/protonet_5w1s",
        "model.distance=cosine",
        "miniimagenet/protonet_5w1s: model.distance: squared_euclidean -> cosine",
    ),
]


@pytest.mark.parametrize(("preset", "override", "line"), AUDIT_EDITS)
def test_the_audits_edits_fail_naming_preset_key_and_values(preset: str, override: str, line: str):
    found = changes(preset, read_snapshot(preset), guarded_values(preset, [override]))
    assert [str(c) for c in found] == [line]
    assert f"\n  {line}    [source: " in drift_message(preset, found)


def override_text(value: Any) -> str:
    """``value`` as a Hydra override value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return "'" + value.replace("'", "\\'") + "'"
    return repr(value)


def test_overrides_of_sampled_keys_are_reported():
    """20 (preset, scalar key) pairs drawn with a fixed seed, each overridden in composition: the
    guard reports that key, and any other key it reports took the same new value (it interpolates
    the edited one, as model.learner.n_classes does data.n_way)."""
    rng = random.Random(35)
    pairs = [
        (p, k)
        for p, values in all_values().items()
        for k, v in values.items()
        if isinstance(v, (bool, int, float, str)) and not k.endswith("_target_")
    ]
    for preset, key in rng.sample(pairs, 20):
        snapshot = read_snapshot(preset)
        old, new = snapshot[key], edited(snapshot[key])[0]
        try:
            composed = guarded_values(preset, [f"{key}={override_text(new)}"])
        except Exception as error:  # a value checked at composition (e.g. monitor) is refused there
            assert key.rsplit(".", 1)[-1] in str(error), (preset, key, error)
            continue
        found = changes(preset, snapshot, composed)
        assert Change(preset, key, old, new) in found, (preset, key, found)
        followers = [c for c in found if c.key != key]
        assert all(same(c.old, old) and same(c.new, new) for c in followers), (preset, key, found)


def edit_conf(tmp_path: Path, file: str, old: str, new: str) -> Path:
    """A copy of conf/ with the line ``old`` of ``file`` replaced by ``new``."""
    conf = tmp_path / "conf"
    shutil.copytree(CONFIG_DIR, conf)
    path = conf / file
    lines = path.read_text().splitlines(keepends=True)
    assert sum(line.rstrip("\n") == old for line in lines) == 1, f"{file} has not exactly one line {old!r}"
    path.write_text("".join(new + "\n" if line.rstrip("\n") == old else line for line in lines))
    return conf


# (file of conf/, its line, the edited line, the key glob it reaches, old, new, presets composed,
# presets that set the same value themselves)
DEFAULT_EDITS = {
    # a model default: reaches only the MAML presets that do not set their own inner_lr
    "model": ("model/maml.yaml", "inner_lr: 0.4", "inner_lr: 0.5", "model.inner_lr", 0.4, 0.5, "*maml_*", None),
    # a backbone default, under model.backbone or model.learner (the Omniglot Meta-LSTM sets its own 64)
    "backbone": ("backbone/conv4.yaml", "hidden: 64", "hidden: 48", "model.*.hidden", 64, 48, "omniglot/*_5w1s",
                 "*meta_lstm*"),
    # a trainer, a callback and a data default, inherited by every preset
    "trainer": ("trainer/default.yaml", "deterministic: false", "deterministic: true", "trainer.deterministic",
                False, True, "*/meta_lstm_5w1s", None),
    "callbacks": ("callbacks/default.yaml", "  minutes: null", "  minutes: 30", "callbacks.cpu_budget.minutes", None,
                  30, "*/baseline_*_5w5s", None),
    "data": ("data/episodic.yaml", "eval_seed: 0", "eval_seed: 1", "data.eval_seed", 0, 1, "*/reptile_5w1s", None),
}  # fmt: skip


@pytest.mark.parametrize("edit", DEFAULT_EDITS.values(), ids=DEFAULT_EDITS.keys())
def test_an_edited_default_fails_every_preset_inheriting_it(tmp_path: Path, edit: tuple):
    """An edit of a default in a copy of conf/ reaches exactly the composed presets whose snapshot
    holds the default's value (less those that set it themselves), each reporting exactly the
    edited key with its old and new value."""
    file, old_line, new_line, key, old, new, composed_glob, sets_its_own = edit
    conf = edit_conf(tmp_path, file, old_line, new_line)
    candidates = [p for p in PRESETS if fnmatchcase(p, composed_glob)]
    holding = [
        p
        for p in candidates
        if any(fnmatchcase(k, key) and same(v, old) for k, v in read_snapshot(p).items())
        and not (sets_its_own and fnmatchcase(p, sets_its_own))
    ]
    edited_presets = compose_flats(candidates, config_dir=conf)
    reached = {}
    for preset, flat in edited_presets.items():
        found = changes(preset, read_snapshot(preset), guarded(flat, unguarded_prefixes()))
        if found:
            reached[preset] = found
    assert holding and sorted(reached) == holding
    for found in reached.values():
        assert len(found) == 1 and fnmatchcase(found[0].key, key), found
        assert same(found[0].old, old) and same(found[0].new, new), found


# --- kept from the per-preset pins: one column, one set of test episodes --------------------------

# what decides a preset's test episodes and the images in them (training-only keys left out)
TEST_EPISODE_KEYS = ("data.n_way", "data.n_shot", "data.n_query", "data.test_episodes", "data.eval_seed")
IMAGE_KEYS = ("data.mean", "data.std", "data.image_size", "data.channels")


@pytest.mark.parametrize("dataset", ["omniglot", "miniimagenet"])
def test_every_preset_of_one_setting_is_tested_on_the_same_episodes(dataset: str):
    """A table column pairs its methods episode by episode, so every preset of one dataset, N and
    K must draw the same test episodes from the same data (issue 18: the same 600 per column)."""
    columns: dict[tuple[int, int], dict[str, list[str]]] = {}
    for preset in (p for p in PAPER_PRESETS if p.startswith(f"{dataset}/")):
        flat = composed(preset)
        test_data = {k: v for k, v in flat.items() if k in TEST_EPISODE_KEYS + IMAGE_KEYS or is_under(k, "data.source")}
        column = (flat["data.n_way"], flat["data.n_shot"])
        columns.setdefault(column, {}).setdefault(json.dumps(test_data, sort_keys=True), []).append(preset)
    split = {f"{n}-way {k}-shot": list(groups.values()) for (n, k), groups in columns.items() if len(groups) > 1}
    assert len(columns) == (4 if dataset == "omniglot" else 2), columns.keys()
    assert not split, f"presets of one column test on different episodes or data: {split}"
