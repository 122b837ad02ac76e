"""Reports over finished runs: ``python -m fewshot.reporting <run dirs or multirun dirs> ...``.

Finds every ``results.json`` below the given folders and writes into ``--out`` the comparison table
(``table.md``/``.csv``: best and CI-overlapping results in bold, as in Ravi & Larochelle's tables),
the paired tests (``paired.md``/``.csv``) and the figures, and draws the Meta-LSTM gate figure into
every run folder with gate statistics. ``--page`` and ``--readme`` rewrite the blocks marked for these
runs in Markdown files (``fewshot.reporting.readme``); ``--history`` prints one row's committed
versions instead (``fewshot.reporting.history``). A single folder's ``report.yaml`` gives its default
options (``fewshot.reporting.options``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from fewshot.io import OutputPathError, check_writable_dir, remove_stale_temporaries, write_text_atomic
from fewshot.reporting.costs import CostsError, ReferenceCosts, find_reference_costs
from fewshot.reporting.display import DEFAULT_DISPLAY, MethodDisplay
from fewshot.reporting.gates import save_gate_figure
from fewshot.reporting.history import row_history
from fewshot.reporting.options import ReportOptionsError, read_folder_options
from fewshot.reporting.paired import EpisodeMismatchError, PairedDifference
from fewshot.reporting.plots import accuracy_vs_shots_figure, save_figure, time_to_accuracy_figure, without_costs
from fewshot.reporting.readme import ReadmeBlockError, check_block, link_from, page_block, readme_block, update_block
from fewshot.reporting.runs import (
    BadResultsError,
    NoRunsError,
    RunRecord,
    find_results,
    load_runs,
    single_episode_note,
)
from fewshot.reporting.speed import speed_note
from fewshot.reporting.table import (
    Cell,
    build_cells,
    checkpoint_note,
    csv_paired,
    csv_table,
    episode_set_note,
    markdown_paired,
    markdown_table,
    markdown_training,
    ordered_settings,
    pair_cells,
    paired_against_best,
    setting_sort_key,
)

__all__ = ["NoRunsError", "find_results", "gate_figures", "main", "requested_pairs"]


def gate_figures(runs: Sequence[RunRecord]) -> list[Path]:
    """Draw the gate figure of every run whose results carry Meta-LSTM gate statistics."""
    written = []
    for run in runs:
        if run.gates:
            written += save_gate_figure(run.gates, run.run_dir, f"{run.method} {run.setting}")
    return written


def requested_pairs(
    cells: Sequence[Cell], pairs: Sequence[Sequence[str]], skip_missing: bool = False
) -> tuple[list[PairedDifference], list[str]]:
    """Paired differences for ``--pair A B`` in every column where both methods ran, and a note
    for each setting where both ran but on different test episodes (other columns): never paired."""
    differences, not_paired = [], []
    for a, b in pairs:
        found = False
        for setting in sorted({c.runs[0].setting for c in cells}):
            cells_a = [c for c in cells if c.method == a and c.runs[0].setting == setting]
            cells_b = [c for c in cells if c.method == b and c.runs[0].setting == setting]
            for cell_a in cells_a:
                for cell_b in cells_b:
                    found = True
                    if cell_a.setting != cell_b.setting:
                        set_a, set_b = (c.setting.removeprefix(setting).strip(" ()") for c in (cell_a, cell_b))
                        not_paired.append(f"{setting}: {a} ({set_a}) and {b} ({set_b})")
                        continue
                    try:
                        differences.append(pair_cells(cell_a, cell_b))
                    except EpisodeMismatchError as err:
                        not_paired.append(f"{setting}: {err}")
        if not found and not skip_missing:
            methods = sorted({c.method for c in cells})
            raise EpisodeMismatchError(
                f"--pair {a} {b}: no setting has runs of both methods. Methods found: {', '.join(methods)}."
            )
    return differences, not_paired


def against_all(
    cells: Sequence[Cell], methods: Sequence[str], display: MethodDisplay = DEFAULT_DISPLAY
) -> tuple[list[PairedDifference], list[str]]:
    """Paired differences of each of ``methods`` against every other method, in every column
    (and the notes of :func:`requested_pairs`)."""
    found = {c.method for c in cells}
    unknown = [m for m in methods if m not in found]
    if unknown:
        raise EpisodeMismatchError(
            f"--against {', '.join(unknown)}: no such method in these runs. Methods found: {', '.join(sorted(found))}."
        )
    pairs = [(a, b) for a in methods for b in sorted(found, key=display.sort_key) if b != a]
    return requested_pairs(cells, pairs, skip_missing=True)


def unique_pairs(differences: Sequence[PairedDifference]) -> list[PairedDifference]:
    """Each pair of methods once per setting (the first of ``a - b`` and ``b - a`` is kept)."""
    kept: dict[tuple[str, frozenset[str]], PairedDifference] = {}
    for d in differences:
        kept.setdefault((d.setting, frozenset((d.method_a, d.method_b))), d)
    return list(kept.values())


def tables_markdown(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """``table.md``: the accuracy table, which checkpoints were tested, the training table, and
    whether the runs' CPU speeds differed."""
    runs = [run for cell in cells for run in cell.runs]
    first_run = {cell.setting: cell.runs[0] for cell in cells}
    settings = list(dict.fromkeys(first_run[column].setting for column in ordered_settings(cells)))
    return (
        markdown_table(cells, display)
        + episode_set_note(cells, display)
        + checkpoint_note(cells, display)
        + "\n"
        + markdown_training(cells, display)
        + speed_note(runs, settings, display)  # per setting, whatever its episode sets
        + single_episode_note(runs)
    )


def costs_notes(runs: Sequence[RunRecord], costs: ReferenceCosts | None, paths: Sequence[Path]) -> list[str]:
    """What the time-to-accuracy figure's time is, when it is not reference time for every row."""
    if costs is None:
        return [
            "no reference_costs.json: accuracy_vs_cpu_time.png is in measured CPU minutes, which depend on each "
            f"run's machine (python -m benchmarks.step_costs <queue> --out {paths[0]}/reference_costs.json makes one)"
        ]
    missing = without_costs(runs, costs)
    return (
        [f"{costs.source} has no cost for {', '.join(missing)}: not drawn in accuracy_vs_cpu_time.png"]
        if missing
        else []
    )


def build_report(
    paths: Sequence[Path],
    out: Path,
    pairs: Sequence[Sequence[str]] = (),
    against: Sequence[str] = (),
    costs: ReferenceCosts | None = None,
    display: MethodDisplay = DEFAULT_DISPLAY,
) -> dict[str, object]:
    """Write the table, paired tests and figures for the runs under ``paths`` (time in reference
    CPU-minutes with ``costs``; rows and colours by ``display``); return what was made."""
    runs = load_runs(list(paths))
    remove_stale_temporaries(out)  # what an earlier report killed while writing left
    cells = build_cells(runs)
    differences, skipped = paired_against_best(cells, display)
    pairs_made, pairs_not_made = requested_pairs(cells, pairs)
    against_made, against_not_made = against_all(cells, against, display)
    differences = unique_pairs(differences + pairs_made + against_made)
    not_paired = list(dict.fromkeys(skipped + pairs_not_made + against_not_made))
    paired_md = markdown_paired(differences, not_paired)
    table_md = tables_markdown(cells, display)
    table_csv = csv_table(cells, display)
    written = [
        write_text_atomic(out / "table.md", table_md),
        write_text_atomic(out / "table.csv", table_csv),
        write_text_atomic(out / "paired.md", paired_md),
        write_text_atomic(out / "paired.csv", csv_paired(differences)),
    ]
    figures = [
        f
        for f in (
            save_figure(time_to_accuracy_figure(runs, costs, display), out / "accuracy_vs_cpu_time.png"),
            save_figure(accuracy_vs_shots_figure(runs, display), out / "accuracy_vs_shots.png"),
        )
        if f is not None
    ]
    gates = gate_figures(runs)
    return {
        "runs": runs,
        "table_md": table_md,
        "accuracy_md": markdown_table(cells, display),
        "table_csv": table_csv,
        "paired_md": paired_md,
        "skipped_pairs": not_paired,
        "notes": costs_notes(runs, costs, paths),
        "files": written + figures,
        "figures": figures + [g for g in gates if g.suffix == ".png"],
        "report_figures": figures,
        "gate_figures": labelled_gate_figures(runs, display),
    }


FIGURE_TITLES = {
    "accuracy_vs_cpu_time.png": "Validation accuracy against time (time to accuracy)",
    "accuracy_vs_shots.png": "Test accuracy against shots",
}


def labelled_gate_figures(runs: Sequence[RunRecord], display: MethodDisplay) -> list[tuple[str, Path]]:
    """``(setting, method seed s)`` and the gate figure of every run with gate statistics, in table order."""
    gated = sorted(
        (r for r in runs if r.gates), key=lambda r: (setting_sort_key(r), display.sort_key(r.method), r.seed)
    )
    return [(f"{r.setting}, {r.method} seed {r.seed}", r.run_dir / "gates.png") for r in gated]


def write_documents(report: dict, source: str, readme: Path | None, page: Path | None, out: Path) -> list[str]:
    """Rewrite the blocks marked for ``source`` in the results page (every table, paired test and
    figure) and the README (the accuracy table and a link to the page, else to ``table.md``);
    return what happened to each. Both files are checked for their markers before either is written."""
    for path in (p for p in (page, readme) if p is not None):
        check_block(path, source)
    done = []
    if page is not None:
        figures = [(FIGURE_TITLES.get(f.name, f.stem), link_from(page, f)) for f in report["report_figures"]]
        gates = [(label, link_from(page, f)) for label, f in report["gate_figures"]]
        block = page_block(str(report["table_md"]), str(report["paired_md"]), figures, gates)
        done.append(
            f"{'updated' if update_block(page, source, block) else 'unchanged'}: the results of {source} in {page}"
        )
    if readme is not None:
        details = link_from(readme, page if page is not None else out / "table.md")
        block = readme_block(str(report["accuracy_md"]), details)
        changed = update_block(readme, source, block)
        done.append(f"{'updated' if changed else 'unchanged'}: the table of {source} in {readme}")
    return done


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m fewshot.reporting", description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", type=Path, help="run folders, multirun folders or results.json files")
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: <folder>/report)")
    parser.add_argument(
        "--pair", nargs=2, action="append", default=[], metavar=("A", "B"), help="also test method A against B"
    )
    parser.add_argument(
        "--against", action="append", default=[], metavar="M", help="also test method M against every other method"
    )
    parser.add_argument(
        "--readme",
        type=Path,
        default=None,
        help="rewrite this Markdown file's block marked for these runs with the accuracy table (README.md)",
    )
    parser.add_argument(
        "--page",
        type=Path,
        default=None,
        help="rewrite this Markdown file's block marked for these runs with every table and figure (docs/results.md)",
    )
    parser.add_argument(
        "--costs",
        type=Path,
        default=None,
        help="reference costs per step (benchmarks.step_costs; default: <folder>/reference_costs.json if present)",
    )
    parser.add_argument(
        "--history",
        metavar="SETTING/METHOD",
        default=None,
        help='print the git history of one row\'s results (e.g. "omniglot 5-way 1-shot/Meta-LSTM"); no report',
    )
    parser.add_argument("--wandb", action="store_true", help="log the table and figures as a W&B run")
    parser.add_argument("--wandb-project", default="fewshot")
    parser.add_argument("--wandb-group", default=None, help="W&B group (default: the report folder's name)")
    parser.add_argument("--wandb-online", action="store_true", help="log online instead of offline")
    args = parser.parse_args(argv)
    single_folder = len(args.paths) == 1 and args.paths[0].is_dir()
    out = args.out or (args.paths[0] / "report" if single_folder else Path("report"))
    if args.history is not None:
        try:
            print(row_history(args.paths, args.history), end="")
        except (NoRunsError, BadResultsError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    try:
        options = read_folder_options(args.paths)
        if options.source is not None:
            print(f"options from {options.source}: {options.as_arguments()}")
        args.against = list(dict.fromkeys(options.against + args.against))
        args.pair = options.pair + args.pair
        args.readme = args.readme or options.readme
        args.page = args.page or options.page
        source = " ".join(str(p) for p in args.paths)
        for document in (d for d in (args.page, args.readme) if d is not None):
            check_block(document, source)  # before the report is made
        check_writable_dir(out, create=False)  # before reading every run
        costs = find_reference_costs(args.paths, args.costs)
        report = build_report(args.paths, out, args.pair, args.against, costs, options.display)
        for line in write_documents(report, source, args.readme, args.page, out):
            print(line)
    except (
        NoRunsError,
        BadResultsError,
        EpisodeMismatchError,
        OutputPathError,
        ReadmeBlockError,
        ReportOptionsError,
        CostsError,
        OSError,
    ) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{len(report['runs'])} run(s) found\n")
    print(report["table_md"])
    print(report["paired_md"])
    for note in report["skipped_pairs"]:
        print(f"note: not paired: {note}")
    for note in report["notes"]:
        print(f"note: {note}")
    for path in report["files"]:
        print(f"wrote {path}")
    for path in report["figures"]:
        if path not in report["files"]:
            print(f"wrote {path}")
    if not any(run.gates for run in report["runs"]):
        print("no Meta-LSTM gate statistics in these runs: no gate figure drawn")
    if args.wandb:
        from fewshot.reporting.wandb_report import log_report_to_wandb

        folder = log_report_to_wandb(
            report["table_csv"],
            report["figures"],
            save_dir=out,
            project=args.wandb_project,
            group=args.wandb_group or out.resolve().parent.name,
            offline=not args.wandb_online,
        )
        hint = "" if args.wandb_online else " (offline: `wandb sync` it to upload)"
        print(f"logged to W&B run {folder}{hint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
