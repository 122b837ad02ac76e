"""Collect finished runs into a results folder that can be committed: one ``results.json`` per
run, under ``<dataset>_<N>w<K>s/<method>/seed<k>/``, with every path of the machine that ran it
replaced by a placeholder (``<run>``, ``<data>``, ``<project>``, ``<home>``), so that the report
regenerates tables and figures from the committed files alone.

    python -m fewshot.reporting.collect logs/plateau/omniglot --into results/omniglot
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewshot.io import (
    OutputPathError,
    UnsafePathError,
    check_inside,
    check_writable_dir,
    json_text,
    remove_stale_temporaries,
    safe_int,
    same_file,
    slug,
    write_text_atomic,
)
from fewshot.reporting.checks import results_problems
from fewshot.reporting.history import ReplacementError, check_replacement
from fewshot.reporting.results import RESULTS_FILE
from fewshot.reporting.runs import BadResultsError, NoRunsError, find_results, load_results

PLACEHOLDERS = (("paths.output_dir", "<run>"), ("paths.data_dir", "<data>"), ("paths.root_dir", "<project>"))
HOME = "<home>"
# any other absolute path (one the collector has no placeholder for)
OTHER_PATH = "<path>"

RUN_NAME_KEY = "run_name"

# the start of an absolute path inside a string: ``/x`` (not inside a word, a relative path or a
# URL's ``//``), ``~/x`` or ``~user/x``, ``C:\x`` or ``C:/x``, ``\\server\share``; it runs to the
# next space, quote, closing bracket or separator of a list
ABSOLUTE_PATH = re.compile(
    r"""(?:
        (?<![\w.>})\]~/\\-])/(?![/\s])
      | (?<![\w.-])~[\w.-]*/
      | (?<![\w])[A-Za-z]:[\\/]
      | (?<![\w\\])\\\\(?=[^\\\s])
    )[^\s"'<>|,;:*?)\]}]*""",
    re.VERBOSE,
)


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
    roots.append((str(Path.home()), HOME))
    # "/" alone (a home or root of "/") is a prefix of every path: it names no machine
    return sorted({r for r in roots if len(r[0]) > 1}, key=lambda r: -len(r[0]))


def replace_absolute_paths(text: str) -> str:
    """``text`` with every absolute path left in it replaced: ``~/x`` by ``<home>/x``, others by ``<path>``."""

    def placeholder(match: re.Match[str]) -> str:
        path = match.group(0)
        return HOME + path[1:] if path.startswith("~/") else OTHER_PATH

    return ABSOLUTE_PATH.sub(placeholder, text)


def strip_paths(value: Any, roots: Sequence[tuple[str, str]]) -> Any:
    """``value`` with every machine path replaced: known roots by their placeholder, any other
    absolute path (in any string, keys included) by ``<path>``."""
    if isinstance(value, Mapping):
        return {strip_paths(k, roots): strip_paths(v, roots) for k, v in value.items()}
    if isinstance(value, list):
        return [strip_paths(v, roots) for v in value]
    if isinstance(value, str):
        for prefix, placeholder in roots:
            # only whole path parts: the root /home/al is no prefix of /home/alice
            value = re.sub(re.escape(prefix) + r"(?=$|[/\\\s\"',;:])", placeholder.replace("\\", r"\\"), value)
        return replace_absolute_paths(value)
    return value


def collected_path(results: Mapping[str, Any], into: Path, source: Path | str = "the results file") -> Path:
    """Where a run's results go: ``<into>/<dataset>_<N>w<K>s/<method>/seed<k>/results.json``.

    Every part comes from the file, so each is checked (numbers are integers, names are made folder
    names, the path lies under ``into``); an UnsafePathError names the file, the key, its value and the fix.
    """
    fix = f"fix that key in {source} (it should be what train.py wrote)"
    dataset = slug(results.get("dataset"), f"{source}: dataset", fix)
    n_way = safe_int(results.get("n_way"), f"{source}: n_way", fix, minimum=1)
    n_shot = safe_int(results.get("n_shot"), f"{source}: n_shot", fix, minimum=1)
    seed = safe_int(results.get("seed", 0), f"{source}: seed", fix)
    method = slug(results.get("method"), f"{source}: method", fix)
    target = into / f"{dataset}_{n_way}w{n_shot}s" / method / f"seed{seed}" / RESULTS_FILE
    return check_inside(target, into, f"{source} would be collected to")


def run_label(results: Mapping[str, Any], where: Path | str) -> str:
    """``<where> (run <name>, test acc 46.70%)`` to name a run in a message."""
    test = results.get("test") if isinstance(results.get("test"), Mapping) else {}
    acc = test.get("acc")
    score = f"test acc {100 * acc:.2f}%" if isinstance(acc, int | float) else "no test acc"
    name = results.get(RUN_NAME_KEY)
    return f"{where} ({f'run {name}, ' if name else ''}{score})"


def check_replaceable(target: Path, source: Path, text: str, replace: bool) -> bool:
    """Whether ``target`` must be written: False when it already holds exactly ``text``; a BadResultsError
    when it holds another run of the same setting, method and seed (naming both) and ``replace`` is False,
    or when ``target`` is ``source`` itself.
    """
    if not target.exists():
        return True
    if target.read_text() == text:
        return False
    if same_file(target, source):
        raise BadResultsError(
            f"{source} is both a run to collect and where it would be collected to; collect into another folder."
        )
    if not replace:
        kept = run_label(load_results(target), target)
        raise BadResultsError(
            f"{kept} already holds a run of the same setting, method and seed as "
            f"{run_label(load_results(source), source)}; pass --replace to replace it, or collect into another folder."
        )
    return True


def collect(paths: Sequence[Path], into: Path, replace: bool = False, reason: str | None = None) -> list[Path]:
    """Copy every tested run under ``paths`` into ``into`` without machine paths; refuse two
    runs that would land on the same place (same setting, method and seed), and a run that
    would replace another already in ``into`` unless ``replace``; a replaced result with other
    test numbers needs a ``reason``, recorded in the new file (``replaces``). Nothing is written
    unless every run can be."""
    planned: dict[Path, tuple[Path, str]] = {}
    for source in find_results(list(paths)):
        results = load_results(source)
        if not results.get("test"):
            continue
        problems = results_problems(results)
        if problems:
            raise BadResultsError(f"{source} does not add up: {'; '.join(problems)}.")
        target = collected_path(results, into, source)
        if target in planned:
            raise BadResultsError(
                f"{source} and {planned[target][0]} are the same setting, method and seed; collect one of them."
            )
        portable = strip_paths(results, machine_roots(results))
        # the run's folder name (a queue's run name): what `run_queue.py --skip-collected` matches
        portable.setdefault(RUN_NAME_KEY, source.parent.name)
        if replace:
            portable = check_replacement(target, portable, reason)
        planned[target] = (source, json_text(portable, sort_keys=True))
    if not planned:
        raise NoRunsError(f"No tested runs under {', '.join(map(str, paths))}.")
    changed = [target for target, (source, text) in planned.items() if check_replaceable(target, source, text, replace)]
    for target in changed:
        remove_stale_temporaries(target.parent)
        write_text_atomic(target, planned[target][1])
    return sorted(planned)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m fewshot.reporting.collect", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run or multirun folders of train.py")
    parser.add_argument("--into", type=Path, required=True, help="the results folder to write, e.g. results/omniglot")
    parser.add_argument(
        "--replace",
        action="store_true",
        help="replace a collected run of the same setting, method and seed (refused without it)",
    )
    parser.add_argument(
        "--reason",
        help="why a replaced result's test numbers change (recorded as 'replaces' in the new results.json)",
    )
    args = parser.parse_args(argv)
    try:
        check_writable_dir(args.into)
        written = collect(args.paths, args.into, args.replace, args.reason)
    except (NoRunsError, BadResultsError, OutputPathError, UnsafePathError, ReplacementError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
