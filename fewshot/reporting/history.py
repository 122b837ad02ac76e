"""A committed test result is never silently replaced (:func:`check_replacement`: collect's ``--reason``
is recorded as ``replaces``), and a row's history can be read back from ``git log``
(:func:`row_history`, ``python -m fewshot.reporting <folder> --history "<setting>/<method>"``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewshot.reporting.results import git
from fewshot.reporting.runs import NoRunsError, RunRecord, load_runs

REPLACES_KEY = "replaces"


class ReplacementError(ValueError):
    """A committed result would be replaced by other test numbers without a reason."""


def test_numbers(results: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a results file says about the test: accuracy, CI, episodes, fingerprint, per episode."""
    test = results.get("test") or {}
    return (test.get("acc"), test.get("ci95"), test.get("episodes"), test.get("fingerprint"), test.get("episode_acc"))


def percent(value: Any) -> str:
    """An accuracy fraction in percent (``89.70``), or ``?``."""
    return f"{100 * value:.2f}" if isinstance(value, (int, float)) else "?"


def check_replacement(target: Path, new: Mapping[str, Any], reason: str | None) -> dict[str, Any]:
    """What to write at ``target``: ``new`` as it is where nothing is there or the test numbers
    are the same; else ``new`` with a ``replaces`` record of the result there and ``reason``,
    refused (ReplacementError) without a reason."""
    if not target.is_file():
        return dict(new)
    old = json.loads(target.read_text())
    if test_numbers(old) == test_numbers(new):
        return dict(new)
    old_test, new_test = old.get("test") or {}, new.get("test") or {}
    if not reason:
        raise ReplacementError(
            f"{target} holds a result with other test numbers (test acc {percent(old_test.get('acc'))} there, "
            f"{percent(new_test.get('acc'))} now); replacing it needs a reason, recorded in the new results.json as "
            f"'{REPLACES_KEY}': give one (collect's --reason), or collect into another folder."
        )
    record = {
        "commit": (git(target.parent, "log", "-1", "--format=%H", "--", target.name) or "").strip() or None,
        "git_commit": old.get("git_commit"),
        "acc": old_test.get("acc"),
        "ci95": old_test.get("ci95"),
        "episodes": old_test.get("episodes"),
        "fingerprint": old_test.get("fingerprint"),
        "reason": reason,
    }
    return {**new, REPLACES_KEY: record}


def matching_runs(paths: Sequence[Path], row: str) -> list[RunRecord]:
    """The runs (seeds) of the row ``<setting>/<method>`` under ``paths``."""
    setting, slash, method = row.partition("/")
    runs = load_runs(list(paths))
    found = [r for r in runs if slash and r.setting == setting.strip() and r.method == method.strip()]
    if not found:
        rows = sorted({f"{r.setting}/{r.method}" for r in runs})
        raise NoRunsError(f"--history {row!r}: no such row; the rows are: {'; '.join(rows)}.")
    return sorted(found, key=lambda r: r.seed)


def committed_versions(path: Path) -> list[tuple[str, str, dict[str, Any]]]:
    """``(commit, date, results)`` of every committed version of a results file, newest first
    (following renames); the working tree's version first when it differs from the last commit."""
    log = git(path.parent, "log", "--follow", "--format=%H %cs", "--", path.name) or ""
    top = (git(path.parent, "rev-parse", "--show-toplevel") or "").strip()
    versions = []
    names = (git(path.parent, "log", "--follow", "--name-only", "--format=", "--", path.name) or "").split()
    for line, name in zip(log.splitlines(), names):
        commit, date = line.split()
        text = git(Path(top), "show", f"{commit}:{name}")
        try:
            versions.append((commit, date, json.loads(text or "")))
        except ValueError:
            continue
    current = json.loads(path.read_text())
    if not versions or test_numbers(versions[0][2]) != test_numbers(current):
        versions.insert(0, ("working tree", "-", current))
    return versions


def version_row(seed: int, commit: str, date: str, results: Mapping[str, Any]) -> str:
    """One Markdown row of a row's history."""
    test, train = results.get("test") or {}, results.get("train") or {}
    acc, ci95 = test.get("acc"), test.get("ci95")
    score = f"{100 * acc:.2f} ± {100 * ci95:.2f}" if isinstance(acc, float) and isinstance(ci95, float) else "?"
    replaces = results.get(REPLACES_KEY) or {}
    reason = replaces.get("reason", "")
    if reason and isinstance(replaces.get("acc"), float):
        reason = f"replaces {100 * replaces['acc']:.2f} ({str(replaces.get('commit'))[:10]}): {reason}"
    length = f"{train.get('steps', '?')} steps, {train.get('stopped_by', '?')}"
    return f"| {seed} | {commit[:10]} | {date} | {score} | {length} | {reason} |"


def row_history(paths: Sequence[Path], row: str) -> str:
    """A Markdown table of every committed version of the row's results files, seed by seed."""
    lines = [
        f"History of {row} (git log of its results.json files, newest first):",
        "",
        "| seed | commit | date | test acc | training | replaces |",
        "|---:|---|---|---:|---|---|",
    ]
    for run in matching_runs(paths, row):
        for commit, date, results in committed_versions(run.path):
            lines.append(version_row(run.seed, commit, date, results))
    return "\n".join(lines) + "\n"
