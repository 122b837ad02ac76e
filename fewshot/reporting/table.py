"""The comparison table: method x setting, mean accuracy with 95% CI, best bold."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from fewshot.reporting.display import DEFAULT_DISPLAY, MethodDisplay
from fewshot.reporting.paired import EpisodeMismatchError, PairedDifference, episode_accuracies, paired_difference
from fewshot.reporting.results import format_accuracy
from fewshot.reporting.runs import BadResultsError, RunRecord
from fewshot.reporting.trend import Trend, mean_trend, trend_text, validation_trend


@dataclass(frozen=True)
class Cell:
    """One method in one setting, over one or more runs (training seeds) on the same episodes.

    ``acc`` is the mean test accuracy over the runs and ``ci95`` the mean per-run 95% CI over
    test episodes (for one run: that run's CI); ``seed_std`` is the spread (sample std) of the
    runs' accuracies, None for a single run.
    """

    method: str
    setting: str
    runs: tuple[RunRecord, ...]
    acc: float
    ci95: float
    seed_std: float | None
    best: bool = False
    overlaps_best: bool = False

    @property
    def bold(self) -> bool:
        """Marked as the paper does: the best, and every result whose CI overlaps the best's."""
        return self.best or self.overlaps_best


def setting_sort_key(run: RunRecord) -> tuple[str, int, int]:
    """Columns sorted by dataset, N, then K."""
    return (run.dataset, run.n_way, run.n_shot)


def group_runs(runs: Iterable[RunRecord]) -> dict[tuple[str, str], list[RunRecord]]:
    """Runs grouped by (method, setting), each group's seeds on the same test episodes."""
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for run in runs:
        groups.setdefault((run.method, run.setting), []).append(run)
    for (method, setting), group in groups.items():
        refuse_repeated_seeds(method, setting, group)
        episode_accuracies(group)  # refuses seeds scored on different episodes
        group.sort(key=lambda r: r.seed)
    return groups


def refuse_repeated_seeds(method: str, setting: str, runs: Sequence[RunRecord]) -> None:
    """A cell averages one run per training seed: refuse two runs of one seed, naming them."""
    seeds = [r.seed for r in runs]
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        paths = [str(r.path) for r in runs if r.seed == repeated[0]]
        raise BadResultsError(
            f"{method} in {setting} has {len(paths)} runs of seed {repeated[0]} ({', '.join(paths)}): a cell "
            "averages one run per training seed, so these would count as more seeds. Keep one of them in the "
            "folders you report, or name runs that differ in their settings with variant=... (their own rows)."
        )


def make_cell(method: str, setting: str, runs: Sequence[RunRecord]) -> Cell:
    """Summarise the runs of one method in one setting."""
    accs = [r.acc for r in runs]
    return Cell(
        method=method,
        setting=setting,
        runs=tuple(runs),
        acc=statistics.fmean(accs),
        ci95=statistics.fmean(r.ci95 for r in runs),
        seed_std=statistics.stdev(accs) if len(accs) > 1 else None,
    )


def width(cell: Cell) -> float:
    """A cell's CI half-width for the overlap test: 0 where one episode gives no interval (NaN)."""
    return 0.0 if math.isnan(cell.ci95) else cell.ci95


def mark_best(cells: Sequence[Cell]) -> list[Cell]:
    """Flag each setting's best cell and the cells whose CI overlaps it."""
    marked = []
    by_setting: dict[str, list[Cell]] = {}
    for cell in cells:
        by_setting.setdefault(cell.setting, []).append(cell)
    for setting_cells in by_setting.values():
        top = max(setting_cells, key=lambda c: c.acc)
        for cell in setting_cells:
            is_best = cell is top
            overlaps = not is_best and cell.acc + width(cell) >= top.acc - width(top)
            marked.append(replace(cell, best=is_best, overlaps_best=overlaps))
    return marked


def episode_set(run: RunRecord) -> str:
    """The test episodes a run was scored on: its fingerprint, or for a results file written
    without one, ``unfingerprinted <count>``."""
    return run.fingerprint or f"unfingerprinted {run.episodes}"


def episode_set_label(key: str) -> str:
    """A short name of an episode set for a column header: the fingerprint's first 8 characters."""
    return key if key.startswith("unfingerprinted") else key[:8]


def column_of_runs(groups: dict[tuple[str, str], list[RunRecord]]) -> dict[tuple[str, str], str]:
    """The column of each (method, setting) group: the setting itself where every run of that
    setting scored the same test episodes, else ``<setting> (episodes <set>)``, one column per set,
    so that no column compares (bolds, pairs) methods scored on different episodes."""
    sets_of: dict[str, set[str]] = {}
    for (_, setting), group in groups.items():
        sets_of.setdefault(setting, set()).add(episode_set(group[0]))
    return {
        (method, setting): setting
        if len(sets_of[setting]) == 1
        else f"{setting} (episodes {episode_set_label(episode_set(group[0]))})"
        for (method, setting), group in groups.items()
    }


def build_cells(runs: Sequence[RunRecord]) -> list[Cell]:
    """Every (method, column) cell of the table, with best and overlap marks; a column is a
    setting, split by test-episode set where its runs scored different episodes."""
    groups = group_runs(runs)
    columns = column_of_runs(groups)
    cells = [make_cell(method, columns[(method, setting)], group) for (method, setting), group in groups.items()]
    return mark_best(cells)


def ordered_settings(cells: Sequence[Cell]) -> list[str]:
    """The table's columns in order (a setting's episode-set columns side by side)."""
    firsts = {c.setting: c.runs[0] for c in cells}
    return sorted(firsts, key=lambda s: (setting_sort_key(firsts[s]), s))


def episode_set_note(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """Lines under the table naming the settings whose runs scored different test episodes, and
    which rows scored which (empty when every setting has one episode set)."""
    split: dict[str, dict[str, list[str]]] = {}
    for cell in cells:
        first = cell.runs[0]
        if cell.setting != first.setting:
            split.setdefault(first.setting, {}).setdefault(cell.setting, []).append(cell.method)
    if not split:
        return ""
    lines = [
        "\nTest episodes differ within a setting, so it is split into one column per episode set; bold marks and "
        "paired tests compare rows of one column only. To compare all, test every run on the same episodes (same "
        "data config, data.eval_seed, data.n_query and data.test_episodes):"
    ]
    for setting, columns in split.items():
        listed = "; ".join(
            f"{column}: {', '.join(sorted(rows, key=display.sort_key))}" for column, rows in sorted(columns.items())
        )
        lines.append(f"- {setting}: {listed}")
    return "\n".join(lines) + "\n"


def ordered_methods(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> list[str]:
    """The table's rows in order."""
    return sorted({c.method for c in cells}, key=display.sort_key)


def cell_text(cell: Cell | None) -> str:
    """``acc ± ci`` in percent, with the seed spread for several seeds, bold where marked."""
    if cell is None:
        return "-"
    text = format_accuracy(cell.acc, cell.ci95)
    if cell.seed_std is not None:
        text += f" (sd {100 * cell.seed_std:.2f}, {len(cell.runs)} seeds)"
    return f"**{text}**" if cell.bold else text


def tested_checkpoints(cell: Cell) -> str:
    """Which checkpoint the cell's runs tested: ``best``, ``last`` or both (``best+last``)."""
    return "+".join(sorted({run.test_checkpoint for run in cell.runs}))


def checkpoint_note(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """A line under the table naming the methods tested with other than the best-on-validation weights."""
    other = sorted(
        {(c.method, tested_checkpoints(c)) for c in cells if tested_checkpoints(c) != "best"},
        key=lambda m: display.sort_key(m[0]),
    )
    if not other:
        return "\nEvery run was tested with its best-on-validation checkpoint.\n"
    listed = ", ".join(f"{method} ({which})" for method, which in other)
    return (
        "\nTested checkpoint: best on validation, except " + listed + " (last = the final weights: the run's "
        "test_checkpoint=last, or no best-on-validation checkpoint was saved).\n"
    )


def method_by_setting(
    cells: Sequence[Cell], corner: str, text: Callable[[Cell | None], str], display: MethodDisplay = DEFAULT_DISPLAY
) -> str:
    """A Markdown grid, one row per method and one column per setting, each entry ``text(cell)``
    (``None`` where a method has no run in a setting); ``corner`` heads the method column."""
    settings = ordered_settings(cells)
    index = {(c.method, c.setting): c for c in cells}
    lines = [
        f"| {corner} | " + " | ".join(settings) + " |",
        "|---|" + "---:|" * len(settings),
    ]
    for method in ordered_methods(cells, display):
        lines.append(f"| {method} | " + " | ".join(text(index.get((method, s))) for s in settings) + " |")
    return "\n".join(lines) + "\n"


def markdown_table(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """The method x setting table in Markdown (best and CI-overlapping results in bold)."""
    return method_by_setting(cells, "method", cell_text, display)


# what ended a run's training (results.json train.stopped_by), as the training table says it
STOP_TEXT = {
    "plateau": "plateau",
    "cpu_budget": "CPU cap",
    "max_time": "time cap",
    "max_steps": "step cap",
    "max_epochs": "epoch cap",
}


def cell_trend(cell: Cell) -> Trend | None:
    """The late validation trend of a cell's runs (mean over seeds), or None."""
    return mean_trend([validation_trend(r.val_history) for r in cell.runs])


def training_text(cell: Cell | None) -> str:
    """``<CPU-minutes> min, <what stopped it>, <validation trend>`` of a cell's runs (means over
    seeds; the trend is left out where no run has enough validations for one)."""
    if cell is None:
        return "-"
    cpu_minutes = mean_cpu_minutes(cell)
    minutes = "? min" if cpu_minutes is None else f"{cpu_minutes:.0f} min"
    reasons = [STOP_TEXT.get(str(r.train.get("stopped_by")), "not recorded") for r in cell.runs]
    if len(set(reasons)) == 1:
        text = f"{minutes}, {reasons[0]}"
    else:
        text = f"{minutes}, " + ", ".join(f"{reasons.count(x)}/{len(reasons)} {x}" for x in sorted(set(reasons)))
    trend = trend_text(cell_trend(cell))
    return f"{text}, {trend}" if trend else text


def markdown_training(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """CPU-minutes of training, what ended it ("plateau": early stopping on validation
    accuracy; "CPU cap": the budget ran out first) and the validation trend (accuracy points
    per 10 CPU-minutes over the second half of the run's validations), per method and setting."""
    return method_by_setting(cells, "training: CPU time, stopped by, validation trend", training_text, display)


def mean_cpu_minutes(cell: Cell) -> float | None:
    """The mean CPU-minutes of training of a cell's runs (those that recorded them), or None."""
    cpu = [r.train.get("cpu_s") for r in cell.runs]
    cpu = [c for c in cpu if isinstance(c, (int, float)) and math.isfinite(c)]
    return statistics.fmean(cpu) / 60 if cpu else None


def median_speed_ms(cell: Cell) -> float | None:
    """The median of the CPU speed probes of a cell's runs (those that were probed), or None."""
    speeds = [r.speed_ms for r in cell.runs if r.speed_ms is not None]
    return statistics.median(speeds) if speeds else None


def number_or_blank(value: float | None, digits: int) -> str:
    """``value`` with ``digits`` decimals, or an empty CSV field for None."""
    return "" if value is None else f"{value:.{digits}f}"


# table.csv's columns: one row per cell, the numbers in [0, 1], and the training budget of its runs
TABLE_CSV: dict[str, Callable[[Cell], object]] = {
    "method": lambda c: c.method,
    "setting": lambda c: c.setting,
    "dataset": lambda c: c.runs[0].dataset,
    "n_way": lambda c: c.runs[0].n_way,
    "n_shot": lambda c: c.runs[0].n_shot,
    "acc": lambda c: f"{c.acc:.6f}",
    "ci95": lambda c: f"{c.ci95:.6f}",
    "episodes": lambda c: c.runs[0].episodes,
    "seeds": lambda c: len(c.runs),
    "seed_std": lambda c: number_or_blank(c.seed_std, 6),
    "best": lambda c: int(c.best),
    "overlaps_best": lambda c: int(c.overlaps_best),
    "train_steps": lambda c: c.runs[0].train.get("steps", ""),
    "train_cpu_min": lambda c: number_or_blank(mean_cpu_minutes(c), 2),
    "stopped_by": lambda c: "+".join(sorted({str(r.train.get("stopped_by", "")) for r in c.runs})),
    "val_trend_per_10_cpu_min": lambda c: number_or_blank(getattr(cell_trend(c), "slope", None), 3),
    "val_trend_ci95": lambda c: number_or_blank(getattr(cell_trend(c), "ci95", None), 3),
    "test_checkpoint": tested_checkpoints,
    "speed_probe_ms": lambda c: number_or_blank(median_speed_ms(c), 2),
    "fingerprint": lambda c: c.runs[0].fingerprint or "",
}


def csv_table(cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY) -> str:
    """One CSV row per cell in table order (columns: ``TABLE_CSV``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(TABLE_CSV)
    order = {s: i for i, s in enumerate(ordered_settings(cells))}
    for cell in sorted(cells, key=lambda c: (order[c.setting], display.sort_key(c.method))):
        writer.writerow([column(cell) for column in TABLE_CSV.values()])
    return out.getvalue()


def pair_cells(a: Cell, b: Cell) -> PairedDifference:
    """The paired difference of two cells of one column, named by that column."""
    return replace(paired_difference(a.runs, b.runs), setting=a.setting)


def paired_against_best(
    cells: Sequence[Cell], display: MethodDisplay = DEFAULT_DISPLAY
) -> tuple[list[PairedDifference], list[str]]:
    """In every column, the paired difference of the best method minus each other method,
    and a note for each pair skipped because its runs scored different episodes."""
    differences, skipped = [], []
    for setting in ordered_settings(cells):
        in_setting = [c for c in cells if c.setting == setting]
        best = next(c for c in in_setting if c.best)
        for cell in sorted(in_setting, key=lambda c: display.sort_key(c.method)):
            if cell is best:
                continue
            try:
                differences.append(pair_cells(best, cell))
            except EpisodeMismatchError as err:
                skipped.append(str(err))
    return differences, skipped


def p_value_text(p: float) -> str:
    """A p-value for a table; below double precision's resolution it reads ``<1e-16``."""
    return "<1e-16" if p < 1e-16 else f"{p:.3g}"


def seed_interval_text(d: PairedDifference) -> str:
    """The seed column of a paired row: ``± 1.15 (2 df)``, or ``episodes only`` with one seed on a side."""
    if d.seed_interval is None:
        return "episodes only"
    return f"± {100 * d.seed_interval.ci95:.2f} ({d.seed_interval.dof} df)"


PAIRED_NOTE = (
    "\na - b: the mean per-episode difference (each side's seeds averaged episode by episode) with its 95% CI "
    "over the test episodes, and the paired test's p. over seeds: where both rows have several training seeds, "
    "Welch's 95% t-interval of the difference of their seeds' mean accuracies (every seed of one against every "
    "seed of the other: seed k of two methods are unrelated trainings, so seeds are not paired by number); "
    "significant then needs the difference outside both intervals. episodes only: a side has one training seed, "
    "so the CI, p and significant cover the test episodes only, not how much another training seed would change "
    "the difference.\n"
)


def markdown_paired(differences: Sequence[PairedDifference], not_paired: Sequence[str] = ()) -> str:
    """Paired differences as a Markdown table (percentage points, 95% CI over episodes and, with
    several seeds on both sides, over seeds; p-value), then what the columns mean and the pairs
    left out because their runs scored different test episodes."""
    lines = [
        "| setting | a | b | episodes | seeds | a - b (points) | p | over seeds | significant |",
        "|---|---|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for d in differences:
        lines.append(
            f"| {d.setting} | {d.method_a} | {d.method_b} | {d.episodes} | {d.seeds_a}, {d.seeds_b} | "
            f"{100 * d.mean:+.2f} ± {100 * d.ci95:.2f} | {p_value_text(d.p_value)} | {seed_interval_text(d)} | "
            f"{'yes' if d.significant else 'no'} |"
        )
    text = "\n".join(lines) + "\n" + PAIRED_NOTE
    if not_paired:
        text += "\nNot paired, scored on different test episodes:\n" + "".join(f"- {note}\n" for note in not_paired)
    return text


# paired.csv's columns (numbers in [0, 1]; the seed interval empty with one seed on a side)
PAIRED_CSV: dict[str, Callable[[PairedDifference], object]] = {
    "setting": lambda d: d.setting,
    "method_a": lambda d: d.method_a,
    "method_b": lambda d: d.method_b,
    "episodes": lambda d: d.episodes,
    "seeds_a": lambda d: d.seeds_a,
    "seeds_b": lambda d: d.seeds_b,
    "mean_diff": lambda d: f"{d.mean:.6f}",
    "ci95": lambda d: f"{d.ci95:.6f}",
    "p_value": lambda d: f"{d.p_value:.6g}",
    "seed_ci95": lambda d: "" if d.seed_interval is None else f"{d.seed_interval.ci95:.6f}",
    "seed_dof": lambda d: "" if d.seed_interval is None else d.seed_interval.dof,
    "significant": lambda d: int(d.significant),
}


def csv_paired(differences: Sequence[PairedDifference]) -> str:
    """Paired differences as CSV, one row per difference (columns: ``PAIRED_CSV``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(PAIRED_CSV)
    writer.writerows([column(d) for column in PAIRED_CSV.values()] for d in differences)
    return out.getvalue()
