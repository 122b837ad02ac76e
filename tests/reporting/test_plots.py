"""The report's figures: one look per method across panels, variants in their method's colour,
one legend entry per method however many seeds, panels in the table's column order."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from fewshot.reporting.build import main as report_main
from fewshot.reporting.costs import CostsError, load_reference_costs
from fewshot.reporting.plots import (
    accuracy_vs_shots_figure,
    method_styles,
    row_major,
    save_figure,
    time_to_accuracy_figure,
)
from fewshot.reporting.runs import load_runs
from tests.reporting.test_report import A, B, write_run

HISTORY = [
    {"step": 10, "epoch": 0, "acc": 0.5, "ci95": 0.1, "cpu_s": 60.0},
    {"step": 20, "epoch": 1, "acc": 0.7, "ci95": 0.1, "cpu_s": 120.0},
]


def legend_texts(fig: plt.Figure) -> list[str]:
    """The entries of the figure's one legend."""
    (legend,) = fig.legends
    return [t.get_text() for t in legend.get_texts()]


def test_a_variant_is_drawn_in_its_methods_colour_with_its_own_line_style():
    styles = method_styles(["ProtoNet", "MAML (meta-batch 4)", "MAML", "MatchingNet (learned cosine scale)"])
    assert styles["MAML"].linestyle == "-" and styles["ProtoNet"].linestyle == "-"
    assert styles["MAML (meta-batch 4)"].color == styles["MAML"].color
    assert styles["MAML (meta-batch 4)"].linestyle == "--"
    # a variant whose method is absent still reads as a variant (dashed), in a colour of its own
    assert styles["MatchingNet (learned cosine scale)"].linestyle == "--"
    colors = {styles[m].color for m in ("ProtoNet", "MAML", "MatchingNet (learned cosine scale)")}
    assert len(colors) == 3


def test_two_variants_of_one_method_get_different_line_styles():
    styles = method_styles(["MAML", "MAML (a)", "MAML (b)"])
    assert [styles[m].linestyle for m in ("MAML", "MAML (a)", "MAML (b)")] == ["-", "--", ":"]


@pytest.mark.parametrize("n", [3, 10, 11, 20])
def test_every_method_gets_a_colour_of_its_own(n):
    styles = method_styles([f"method{i}" for i in range(n)])
    assert len({s.color for s in styles.values()}) == n


def test_a_known_method_keeps_its_colour_whatever_else_the_report_holds():
    alone = method_styles(["ProtoNet", "Meta-LSTM"])
    crowded = method_styles(["Baseline-NN", "Siamese", "ProtoNet", "Meta-LSTM", "MAML", "NewMethod", "Other"])
    assert alone["ProtoNet"] == crowded["ProtoNet"] and alone["Meta-LSTM"] == crowded["Meta-LSTM"]
    assert len({style.color for style in crowded.values()}) == len(crowded)


@pytest.mark.parametrize(("n", "columns"), [(11, 6), (8, 3), (6, 6), (7, 4)])
def test_a_legend_reads_its_entries_row_by_row(n, columns):
    """Matplotlib fills a legend's columns top to bottom, the first ones one entry longer."""
    items = [str(i) for i in range(n)]
    reordered = row_major(items, columns)
    rows, extra = divmod(n, columns)
    heights = [rows + (c < extra) for c in range(columns)]
    starts = [sum(heights[:c]) for c in range(columns)]
    layout = [[reordered[starts[c] + r] for c in range(columns) if r < heights[c]] for r in range(max(heights))]
    assert [i for row in layout for i in row] == items


def costs_file(tmp_path: Path, rows: list[tuple[str, str, float]]) -> Path:
    """A reference costs file with ``(method, setting, CPU-s per step)`` rows."""
    path = tmp_path / "costs.json"
    rows_json = [{"lines": [f"l{i}"], "method": m, "setting": s, "step_cpu_s": c} for i, (m, s, c) in enumerate(rows)]
    path.write_text(json.dumps({"version": 1, "machine": {"cpu": "Test CPU 9000"}, "rows": rows_json}))
    return path


def test_one_line_per_method_the_mean_of_its_seeds_and_panels_follow_the_table(tmp_path: Path):
    for seed in range(3):  # seed 2 validated at step 10 only: the mean is drawn where every seed validated
        history = HISTORY[:1] if seed == 2 else [{**p, "acc": p["acc"] + 0.03 * seed} for p in HISTORY]
        write_run(tmp_path / f"p{seed}", "ProtoNet", A, seed=seed, val_history=history)
    write_run(tmp_path / "m", "MAML", B, val_history=HISTORY)
    write_run(tmp_path / "p20", "ProtoNet", A, n_way=20, val_history=HISTORY)
    fig = time_to_accuracy_figure(load_runs([tmp_path]))
    assert [ax.get_title() for ax in fig.axes] == ["toy 5-way 1-shot", "toy 20-way 1-shot"]
    assert legend_texts(fig) == ["MAML", "ProtoNet, 3 seeds"]
    maml, protonet = fig.axes[0].get_lines()
    assert protonet.get_xdata().tolist() == [1.0] and protonet.get_ydata().tolist() == pytest.approx(
        [51.0]
    )  # (50 + 53 + 50) / 3
    assert maml.get_xdata().tolist() == [1.0, 2.0]  # CPU seconds shown in minutes
    plt.close(fig)


def test_time_is_steps_times_the_reference_cost_per_step_when_a_costs_file_is_given(tmp_path: Path):
    write_run(tmp_path / "a", "ProtoNet", A, val_history=HISTORY)  # steps 10 and 20
    write_run(tmp_path / "b", "MAML", B, val_history=HISTORY)
    costs = load_reference_costs(costs_file(tmp_path, [("ProtoNet", "toy 5-way 1-shot", 3.0)]))
    fig = time_to_accuracy_figure(load_runs([tmp_path]), costs)
    (ax,) = fig.axes
    (line,) = ax.get_lines()  # MAML has no reference cost: left out, and the title says so
    assert line.get_xdata().tolist() == [0.5, 1.0]  # 10 and 20 steps x 3 CPU-s, in minutes
    assert ax.get_xlabel() == "reference CPU minutes (log scale)"
    title = fig._suptitle.get_text()
    assert "reference CPU minutes" in title and "Test CPU 9000" in title
    assert "not drawn, no reference cost: MAML (toy 5-way 1-shot)" in title
    plt.close(fig)


def test_without_a_costs_file_the_figure_says_its_time_is_measured_on_each_runs_machine(tmp_path: Path, capsys):
    write_run(tmp_path / "runs" / "a", "ProtoNet", A, val_history=HISTORY)
    fig = time_to_accuracy_figure(load_runs([tmp_path / "runs"]))
    assert fig.axes[0].get_xlabel() == "measured CPU minutes (log scale)"
    assert "MEASURED CPU minutes" in fig._suptitle.get_text() and "no reference_costs.json" in fig._suptitle.get_text()
    plt.close(fig)
    assert report_main([str(tmp_path / "runs")]) == 0
    assert (
        "note: no reference_costs.json: accuracy_vs_cpu_time.png is in measured CPU minutes" in capsys.readouterr().out
    )
    # a folder's own reference_costs.json is used without being named
    costs_file(tmp_path, [("ProtoNet", "toy 5-way 1-shot", 3.0)]).rename(tmp_path / "runs" / "reference_costs.json")
    assert report_main([str(tmp_path / "runs")]) == 0
    assert "measured CPU minutes" not in capsys.readouterr().out


def test_variants_get_a_row_of_panels_of_their_own_over_their_method_drawn_faint(tmp_path: Path):
    write_run(tmp_path / "a", "MAML", A, val_history=HISTORY)
    write_run(tmp_path / "b", "MAML (meta-batch 4)", B, val_history=HISTORY)
    write_run(tmp_path / "c", "ProtoNet", A, n_shot=5, val_history=HISTORY)
    fig = time_to_accuracy_figure(load_runs([tmp_path]))
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "toy 5-way 1-shot",
        "toy 5-way 5-shot",
        "toy 5-way 1-shot: variants",
        "toy 5-way 5-shot: variants",
    ]
    top, _, variants, empty = fig.axes
    assert len(top.get_lines()) == 1 and top.get_lines()[0].get_alpha() == 1.0
    variant, faint_maml = variants.get_lines()
    assert variant.get_linestyle() == "--" and faint_maml.get_alpha() == 0.3
    assert variant.get_color() == faint_maml.get_color()
    assert not empty.get_lines()
    assert legend_texts(fig) == ["MAML", "MAML (meta-batch 4)", "ProtoNet"]
    plt.close(fig)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{", "cannot read the costs file"),
        ('{"version": 1, "rows": [{"method": "M", "setting": "s", "step_cpu_s": -1}]}', "not a positive number"),
        (
            '{"version": 1, "rows": [{"method": "M", "setting": "s", "step_cpu_s": 1}, '
            '{"method": "M", "setting": "s", "step_cpu_s": 2}]}',
            "M in s has two costs",
        ),
    ],
)
def test_a_bad_costs_file_is_refused_naming_it(tmp_path: Path, capsys, content, problem):
    path = tmp_path / "costs.json"
    path.write_text(content)
    with pytest.raises(CostsError, match=problem):
        load_reference_costs(path)
    write_run(tmp_path / "runs" / "a", "ProtoNet", A, val_history=HISTORY)
    assert report_main([str(tmp_path / "runs"), "--costs", str(path)]) == 2
    assert problem in capsys.readouterr().err


def test_time_to_accuracy_figure_has_a_log_time_axis_in_minutes(tmp_path: Path):
    write_run(tmp_path / "a", "ProtoNet", A, val_history=HISTORY)
    fig = time_to_accuracy_figure(load_runs([tmp_path]))
    (ax,) = fig.axes
    assert ax.get_xscale() == "log" and ax.get_lines()[0].get_xdata().tolist() == [1.0, 2.0]
    assert "CPU minutes" in ax.get_xlabel()
    plt.close(fig)


def test_time_to_accuracy_figure_is_not_written_without_cpu_times(tmp_path: Path):
    write_run(tmp_path / "a", "ProtoNet", A, val_history=[{k: v for k, v in HISTORY[0].items() if k != "cpu_s"}])
    assert save_figure(time_to_accuracy_figure(load_runs([tmp_path])), tmp_path / "t.png") is None
    assert not (tmp_path / "t.png").exists()


def test_accuracy_vs_shots_panels_sort_n_way_as_numbers(tmp_path: Path):
    for n_way in (20, 5):
        folder = write_run(tmp_path / f"w{n_way}", "ProtoNet", A, n_way=n_way)
        data = json.loads((folder / "results.json").read_text())
        data["test"]["shots"] = {"5": {"acc": 0.9, "ci95": 0.01}}  # rescored at K=5 (eval.shots)
        (folder / "results.json").write_text(json.dumps(data))
    fig = accuracy_vs_shots_figure(load_runs([tmp_path]))
    assert [ax.get_title() for ax in fig.axes] == ["toy 5-way", "toy 20-way"]
    assert legend_texts(fig) == ["ProtoNet"]
    plt.close(fig)


def minor_labels(ax: plt.Axes) -> list[str]:
    """The minor tick labels of the x-axis as drawn, inside its limits."""
    ax.figure.canvas.draw()
    low, high = ax.get_xlim()
    return [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text() and low <= t.get_position()[0] <= high]


@pytest.mark.parametrize(
    "cpu_s, labels",
    [
        ((300.0, 3660.0), ["5", "20", "50"]),  # 5 to 61 minutes: one power of ten, so 2x and 5x are labelled
        ((18.0, 3660.0), []),  # 0.3 to 61 minutes: 1 and 10 label the axis
    ],
)
def test_a_log_time_axis_under_a_decade_labels_its_2x_and_5x_ticks(tmp_path: Path, cpu_s, labels):
    history = [{**HISTORY[i], "cpu_s": s} for i, s in enumerate(cpu_s)]
    write_run(tmp_path / "a", "ProtoNet", A, val_history=history)
    fig = time_to_accuracy_figure(load_runs([tmp_path]))
    assert minor_labels(fig.axes[0]) == labels
    plt.close(fig)
