"""Atomic, resumable output folders: build in ``<out>.partial``, rename to ``<out>`` when checked."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fewshot.data.errors import DataError
from fewshot.io import TEMP_SUFFIX, write_json_atomic

# Written last, into a finished folder: its presence is what "complete" means.
MARKER = ".fewshot_prepared.json"
# Written first, into the partial folder: a resumed build must be of the same dataset.
PARTIAL_MARKER = ".fewshot_partial.json"
PARTIAL_SUFFIX = ".partial"

Counts = dict[str, dict[str, int]]


@dataclass(frozen=True)
class Prepared:
    """What one prepare command left in ``out``: ``counts`` is ``{split: {class: number of images}}``."""

    dataset: str
    out: Path
    counts: Counts
    written: int = 0
    reused: int = 0  # images a resumed call found already written (and valid) in ``<out>.partial``
    skipped: bool = False  # ``out`` was complete before this call, which then did nothing
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. a split that is not the standard one

    def summary(self) -> str:
        """A few lines for the terminal: what was done and the classes and images per split."""
        if self.skipped:
            head = (
                f"{self.out} already holds a complete {self.dataset}; nothing to do "
                "(delete the folder to build it again)."
            )
        else:
            head = f"{self.dataset} written to {self.out} ({self.written} images written, {self.reused} reused)."
        lines = [head]
        for split, classes in self.counts.items():
            images = sum(classes.values())
            lines.append(f"  {split}: {len(classes)} classes, {images} images")
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


def check_name(name: str, what: str, where: str) -> str:
    """``name`` if it is safe as one file or folder name, else a DataError naming it and ``where``.

    Names taken from an input (archive, CSV) become paths under the output folder; a name
    with a path separator, ``..``, a NUL, or an empty or absolute one could write outside it.
    """
    problem = None
    if not name or name in (".", ".."):
        problem = "is empty or a relative folder reference"
    elif "/" in name or "\\" in name:
        problem = "contains a path separator"
    elif "\0" in name:
        problem = "contains a NUL character"
    elif os.path.isabs(name) or (len(name) > 1 and name[1] == ":"):
        problem = "is an absolute path"
    if problem:
        raise DataError(
            f"{where}: the {what} {name!r} {problem}, so it cannot be a file or folder name; nothing was "
            "written. The input is corrupt or crafted: use the original files."
        )
    return name


def partial_dir(out: Path) -> Path:
    """The folder a build of ``out`` writes into until it is complete."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def finished_counts(out: Path, dataset: str) -> Counts | None:
    """The counts of a complete ``out`` of ``dataset``; None when ``out`` is absent or an empty folder,
    a DataError when it exists but is not a complete build of ``dataset``.
    """
    if not out.exists():
        return None
    if not out.is_dir():
        raise DataError(f"Output {out} exists and is not a folder; pass another --out or remove it.")
    marker = out / MARKER
    if not marker.is_file():
        if not any(out.iterdir()):
            return None
        raise DataError(
            f"Output folder {out} exists and is not a finished `prepare` build (no {MARKER} in it); "
            "delete it or pass another --out."
        )
    info = _read_json(marker)
    if info.get("dataset") != dataset:
        raise DataError(
            f"Output folder {out} already holds {info.get('dataset')!r}, not {dataset!r}; pass another --out."
        )
    return {split: dict(classes) for split, classes in info.get("counts", {}).items()}


def open_partial(out: Path, dataset: str) -> Path:
    """Create (or reopen, to resume) ``<out>.partial`` for a build of ``dataset`` and return it."""
    partial = partial_dir(out)
    marker = partial / PARTIAL_MARKER
    if partial.is_dir() and any(partial.iterdir()):
        # a build stopped inside finish() may hold the final marker instead of the partial one
        found = next((_read_json(m).get("dataset") for m in (marker, partial / MARKER) if m.is_file()), None)
        if found != dataset:
            raise DataError(
                f"{partial} is left over from another build ({found or 'unknown'}), not {dataset}; "
                "delete it or pass another --out."
            )
        remove_temporaries(partial)
        return partial
    partial.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"dataset": dataset}, indent=None)
    return partial


def finish(partial: Path, out: Path, dataset: str, counts: Mapping[str, Mapping[str, int]]) -> None:
    """Mark ``partial`` complete and move it to ``out`` in one rename."""
    remove_temporaries(partial)
    info = {"dataset": dataset, "counts": {s: dict(sorted(c.items())) for s, c in counts.items()}}
    write_json_atomic(partial / MARKER, info, indent=1)
    (partial / PARTIAL_MARKER).unlink(missing_ok=True)
    if out.is_dir():  # an empty folder the user made beforehand (finished_counts allows only that)
        out.rmdir()
    os.replace(partial, out)


def remove_temporaries(root: Path) -> None:
    """Delete the hidden temporary files an interrupted build left under ``root``."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                Path(dirpath, name).unlink(missing_ok=True)


def count_class_files(root: Path) -> dict[str, int]:
    """``{class folder: number of (non-hidden) files}`` for the folders directly under ``root``."""
    if not root.is_dir():
        return {}
    return {
        d.name: sum(1 for f in d.iterdir() if not f.name.startswith("."))
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith(".")
    }


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"Cannot read {path} ({err}); delete its folder and run the command again.") from err
