"""Collect finished runs into a results folder that can be committed: one ``results.json`` per
run, under ``<dataset>_<N>w<K>s/<method>/seed<k>/``, with every path of the machine that ran it
replaced by a placeholder (``<run>``, ``<data>``, ``<project>``, ``<home>``), so that the report
regenerates tables and figures from the committed files alone.

    python -m fewshot.reporting.collect logs/plateau/omniglot --into results/omniglot
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewshot.io import OutputPathError, check_writable_dir, write_text_atomic
from fewshot.reporting.checks import results_problems
from fewshot.reporting.results import RESULTS_FILE
from fewshot.reporting.runs import BadResultsError, NoRunsError, find_results, load_results

PLACEHOLDERS = (("paths.output_dir", "<run>"), ("paths.data_dir", "<data>"), ("paths.root_dir", "<project>"))


RUN_NAME_KEY = "run_name"


def machine_roots(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(absolute prefix, placeholder)`` pairs of a run, longest prefix first."""
    config = results.get("config") or {}
    roots = []
    for key, placeholder in PLACEHOLDERS:
        node: Any = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, str) and node.startswith("/"):
            roots.append((str(Path(node).resolve()), placeholder))
            roots.append((node.rstrip("/"), placeholder))
    roots.append((str(Path.home()), "<home>"))
    return sorted(set(roots), key=lambda r: -len(r[0]))


def strip_paths(value: Any, roots: Sequence[tuple[str, str]]) -> Any:
    """``value`` with every occurrence of a machine path replaced by its placeholder."""
    if isinstance(value, Mapping):
        return {k: strip_paths(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_paths(v, roots) for v in value]
    if isinstance(value, str):
        for prefix, placeholder in roots:
            value = value.replace(prefix, placeholder)
        return value
    return value


def slug(text: str) -> str:
    """A folder name from a method or setting name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_").lower()


def collected_path(results: Mapping[str, Any], into: Path) -> Path:
    """Where a run's results go: ``<into>/<dataset>_<N>w<K>s/<method>/seed<k>/results.json``."""
    setting = f"{results['dataset']}_{results['n_way']}w{results['n_shot']}s"
    return into / slug(setting) / slug(str(results["method"])) / f"seed{results.get('seed', 0)}" / RESULTS_FILE


def collect(paths: Sequence[Path], into: Path) -> list[Path]:
    """Copy every tested run under ``paths`` into ``into`` without machine paths; refuse two
    runs that would land on the same place (same setting, method and seed)."""
    written: dict[Path, Path] = {}
    for source in find_results(list(paths)):
        results = load_results(source)
        if not results.get("test"):
            continue
        problems = results_problems(results)
        if problems:
            raise BadResultsError(f"{source} does not add up: {'; '.join(problems)}.")
        target = collected_path(results, into)
        if target in written:
            raise BadResultsError(
                f"{source} and {written[target]} are the same setting, method and seed; collect one of them."
            )
        portable = strip_paths(results, machine_roots(results))
        # the run's folder name (a queue's run name): what `run_queue.py --skip-collected` matches
        portable.setdefault(RUN_NAME_KEY, source.parent.name)
        write_text_atomic(target, json.dumps(portable, indent=2, sort_keys=True) + "\n")
        written[target] = source
    if not written:
        raise NoRunsError(f"No tested runs under {', '.join(map(str, paths))}.")
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m fewshot.reporting.collect", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders of train.py")
    parser.add_argument("--into", type=Path, required=True, help="the results folder to write, e.g. results/omniglot")
    args = parser.parse_args(argv)
    try:
        check_writable_dir(args.into)
        written = collect(args.paths, args.into)
    except (NoRunsError, BadResultsError, OutputPathError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
