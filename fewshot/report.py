"""Reports over finished runs: ``python -m fewshot.report <run dir or multirun dir> ...``.

Finds every ``results.json`` below the given folders and, for each Meta-LSTM run, draws the
paper-style gate figure (``gates.png`` / ``gates.pdf``) into the run's folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fewshot.reporting.gates import save_gate_figure
from fewshot.reporting.results import RESULTS_FILE, run_title


class NoRunsError(FileNotFoundError):
    """A report was asked for folders that hold no finished runs."""


def find_results(paths: list[Path]) -> list[Path]:
    """Every ``results.json`` in or below ``paths``, sorted; a clear error when there is none."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise NoRunsError(f"{', '.join(map(str, missing))} does not exist; pass a run or multirun folder of train.py.")
    found = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob(RESULTS_FILE))})
    if not found:
        raise NoRunsError(
            f"No {RESULTS_FILE} under {', '.join(map(str, paths))}: these folders hold no finished runs. "
            "Pass the folder that train.py printed (logs/<task>/runs/<time> or a multirun folder)."
        )
    return found


def gate_figures(results_files: list[Path]) -> list[Path]:
    """Draw the gate figure of every run whose results carry Meta-LSTM gate statistics."""
    written = []
    for path in results_files:
        results = json.loads(path.read_text())
        gates = (results.get("test") or {}).get("gates") or (results.get("val") or {}).get("gates")
        if gates:
            written += save_gate_figure(gates, path.parent, run_title(results))
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m fewshot.report", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, multirun folders or results.json files")
    args = parser.parse_args(argv)
    try:
        results = find_results(args.paths)
    except NoRunsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    figures = gate_figures(results)
    print(f"{len(results)} run(s) found")
    for path in figures:
        print(f"wrote {path}")
    if not figures:
        print("no Meta-LSTM gate statistics in these runs: no gate figure drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
