"""Reference costs of a training step (``reference_costs.json``, written by
``python -m benchmarks.step_costs``): each table row's CPU-seconds per step on one reference
machine, validations amortised, so that training length compares across methods in time that
does not depend on the machine each run used."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

COSTS_FILE = "reference_costs.json"
COSTS_VERSION = 1


class CostsError(ValueError):
    """A costs file that cannot be used: unreadable, of another version, or with a bad cost."""


def read_costs(path: Path) -> dict[str, Any]:
    """A costs file of ``benchmarks.step_costs`` (a one-line error naming the file otherwise)."""
    try:
        costs = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise CostsError(
            f"cannot read the costs file {path} ({err}); make it with python -m benchmarks.step_costs."
        ) from err
    rows = costs.get("rows") if isinstance(costs, dict) else None
    if not isinstance(rows, list) or costs.get("version") != COSTS_VERSION:
        raise CostsError(
            f"{path} is not a costs file of version {COSTS_VERSION}; remake it with benchmarks.step_costs."
        )
    for row in rows:
        cost = row.get("step_cpu_s") if isinstance(row, dict) else None
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost <= 0:
            lines = row.get("lines") if isinstance(row, dict) else row
            raise CostsError(f"{path}: {lines} has step_cpu_s {cost!r}, not a positive number.")
    return costs


@dataclass(frozen=True)
class ReferenceCosts:
    """CPU-seconds per training step of each (setting, method) on the reference CPU."""

    cpu: str
    step_cpu_s: dict[tuple[str, str], float]
    source: Path

    def of(self, setting: str, method: str) -> float | None:
        """The cost of a step of ``method`` in ``setting``, or None when the file has none."""
        return self.step_cpu_s.get((setting, method))


def load_reference_costs(path: Path) -> ReferenceCosts:
    """The costs of a costs file, by setting and method (rows that disagree are refused)."""
    costs = read_costs(path)
    by_row: dict[tuple[str, str], float] = {}
    for row in costs["rows"]:
        key = (str(row.get("setting")), str(row.get("method")))
        if key in by_row and not math.isclose(by_row[key], row["step_cpu_s"], rel_tol=1e-9):
            raise CostsError(
                f"{path}: {key[1]} in {key[0]} has two costs ({by_row[key]} and {row['step_cpu_s']} CPU-s per step); "
                "name the lines that differ with variant=... so that they are rows of their own."
            )
        by_row[key] = float(row["step_cpu_s"])
    return ReferenceCosts(str((costs.get("machine") or {}).get("cpu", "an unnamed CPU")), by_row, Path(path))


def find_reference_costs(paths: Sequence[Path], explicit: Path | None = None) -> ReferenceCosts | None:
    """The costs the report uses: ``explicit`` (``--costs``), else ``<folder>/reference_costs.json``
    of a report over one folder when it exists, else None."""
    if explicit is not None:
        return load_reference_costs(explicit)
    if len(paths) == 1 and (Path(paths[0]) / COSTS_FILE).is_file():
        return load_reference_costs(Path(paths[0]) / COSTS_FILE)
    return None
