"""A results folder's own report options (``report.yaml`` beside its runs), so that
``python -m fewshot.reporting <folder>`` alone regenerates exactly what was committed.

``results/omniglot/report.yaml``::

    against: [Meta-LSTM]     # --against: these methods paired against every other
    readme: README.md        # --readme: the Markdown file whose marked block gets the accuracy table
    page: docs/results.md    # --page: the Markdown file whose marked block gets every table and figure
    pair: []                 # --pair A B: extra pairs, e.g. [[ProtoNet, MAML]]
    methods:                 # optional: row order and figure colours, replacing fewshot/reporting/methods.yaml
      - {name: ProtoNet, colour: tab:orange}

Options on the command line add to these (``--against``, ``--pair``) or replace them
(``--readme``, ``--page``). The file is read with ``yaml.safe_load``: data only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fewshot.reporting.display import DEFAULT_DISPLAY, MethodDisplay, MethodDisplayError, with_methods

OPTIONS_FILE = "report.yaml"
KNOWN = ("against", "readme", "page", "pair", "methods")


class ReportOptionsError(ValueError):
    """A ``report.yaml`` that cannot be used: not YAML, unknown keys or values of the wrong type."""


def project_file(path: Path, key: str, value: object, example: str) -> Path | None:
    """A Markdown file named in ``report.yaml`` (``readme``, ``page``): a path inside the project, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ReportOptionsError(f"{path}: {key} must be a file name, e.g. {example}; got {value!r}.")
    if Path(value).is_absolute() or ".." in Path(value).parts or value.startswith("~"):
        # a path from a file's content stays inside the project: pass any other file with --readme / --page
        raise ReportOptionsError(
            f"{path}: {key} must be a path inside the project (relative, no ..), e.g. {example}; got {value!r}; "
            f"pass another file on the command line with --{key}."
        )
    return Path(value)


@dataclass(frozen=True)
class FolderOptions:
    """The options one results folder asks its report to be made with."""

    against: list[str] = field(default_factory=list)
    readme: Path | None = None
    pair: list[list[str]] = field(default_factory=list)
    source: Path | None = None  # the report.yaml they came from
    page: Path | None = None
    display: MethodDisplay = DEFAULT_DISPLAY

    def as_arguments(self) -> str:
        """The same options as command-line arguments, for the log line."""
        words = [f"--against {m}" for m in self.against] + [f"--pair {a} {b}" for a, b in self.pair]
        words += [f"--readme {self.readme}"] if self.readme else []
        words += [f"--page {self.page}"] if self.page else []
        return " ".join(words + (["(its own methods list)"] if self.display is not DEFAULT_DISPLAY else []))


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
    against, pair = data.get("against") or [], data.get("pair") or []
    if not is_string_list(against):
        raise ReportOptionsError(f"{path}: against must be a list of method names, e.g. [Meta-LSTM]; got {against!r}.")
    readme = project_file(path, "readme", data.get("readme"), "README.md")
    page = project_file(path, "page", data.get("page"), "docs/results.md")
    if not isinstance(pair, list) or not all(is_string_list(p) and len(p) == 2 for p in pair):
        raise ReportOptionsError(f"{path}: pair must be a list of [A, B] method pairs; got {pair!r}.")
    try:
        display = with_methods(data["methods"], str(path)) if "methods" in data else DEFAULT_DISPLAY
    except MethodDisplayError as err:
        raise ReportOptionsError(str(err)) from None
    return FolderOptions(against, readme, pair, path, page, display)
