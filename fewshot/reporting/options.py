"""A results folder's own report options (``report.yaml`` beside its runs), so that
``python -m fewshot.reporting <folder>`` alone regenerates exactly what was committed.

``results/omniglot/report.yaml``::

    against: [Meta-LSTM]   # --against: these methods paired against every other
    readme: README.md      # --readme: the Markdown file whose marked block is rewritten
    pair: []               # --pair A B: extra pairs, e.g. [[ProtoNet, MAML]]

Options on the command line add to these (``--against``, ``--pair``) or replace them
(``--readme``). The file is read with ``yaml.safe_load``: data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OPTIONS_FILE = "report.yaml"
KNOWN = ("against", "readme", "pair")


class ReportOptionsError(ValueError):
    """A ``report.yaml`` that cannot be used: not YAML, unknown keys or values of the wrong type."""


@dataclass(frozen=True)
class FolderOptions:
    """The options one results folder asks its report to be made with."""

    against: list[str] = field(default_factory=list)
    readme: Path | None = None
    pair: list[list[str]] = field(default_factory=list)
    source: Path | None = None  # the report.yaml they came from

    def as_arguments(self) -> str:
        """The same options as command-line arguments, for the log line."""
        words = [f"--against {m}" for m in self.against] + [f"--pair {a} {b}" for a, b in self.pair]
        return " ".join(words + ([f"--readme {self.readme}"] if self.readme else []))


def is_string_list(value: Any) -> bool:
    """Whether ``value`` is a list of strings."""
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def read_folder_options(paths: list[Path]) -> FolderOptions:
    """The options of ``<folder>/report.yaml`` when the report is over that one folder, else none."""
    if len(paths) != 1 or not (paths[0] / OPTIONS_FILE).is_file():
        return FolderOptions()
    path = paths[0] / OPTIONS_FILE
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ReportOptionsError(f"{path} is not valid YAML ({err}); fix it or delete it.") from err
    if not isinstance(data, dict):
        raise ReportOptionsError(f"{path} must be a mapping of {', '.join(KNOWN)}; got {type(data).__name__}.")
    unknown = sorted(set(data) - set(KNOWN))
    if unknown:
        raise ReportOptionsError(f"{path}: unknown keys {unknown}; the keys are {', '.join(KNOWN)}.")
    against, readme, pair = data.get("against") or [], data.get("readme"), data.get("pair") or []
    if not is_string_list(against):
        raise ReportOptionsError(f"{path}: against must be a list of method names, e.g. [Meta-LSTM]; got {against!r}.")
    if readme is not None and not isinstance(readme, str):
        raise ReportOptionsError(f"{path}: readme must be a file name, e.g. README.md; got {readme!r}.")
    if readme is not None and (Path(readme).is_absolute() or ".." in Path(readme).parts or readme.startswith("~")):
        # a path from a file's content stays inside the project: pass any other file with --readme
        raise ReportOptionsError(
            f"{path}: readme must be a path inside the project (relative, no ..), e.g. README.md; got {readme!r}; "
            "pass another file on the command line with --readme."
        )
    if not isinstance(pair, list) or not all(is_string_list(p) and len(p) == 2 for p in pair):
        raise ReportOptionsError(f"{path}: pair must be a list of [A, B] method pairs; got {pair!r}.")
    return FolderOptions(against, Path(readme) if readme else None, pair, path)
