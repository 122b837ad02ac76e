"""The report's row order and figure colours come from data: fewshot/reporting/methods.yaml, or a
results folder's report.yaml ``methods:`` list."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_rgb

from fewshot.reporting.build import main as report_main
from fewshot.reporting.display import (
    DEFAULT_DISPLAY,
    MethodDisplayError,
    load_default_display,
    method_display,
)
from fewshot.reporting.options import read_folder_options
from fewshot.reporting.plots import method_styles
from fewshot.reporting.runs import load_runs
from fewshot.reporting.table import build_cells, ordered_methods
from tests.reporting.test_report import A, B, C, write_run

# Ravi & Larochelle's Table 1, then the later methods (methods.yaml)
TABLE_ORDER = [
    "Baseline-finetune",
    "Baseline-NN",
    "Siamese",
    "MatchingNet",
    "MatchingNet-FCE",
    "Meta-LSTM",
    "MAML",
    "FOMAML",
    "Meta-SGD",
    "FO-Meta-SGD",
    "Reptile",
    "ProtoNet",
]


def test_the_package_lists_the_methods_in_table_order_each_in_a_colour_of_its_own():
    assert list(DEFAULT_DISPLAY.order) == TABLE_ORDER
    assert len(set(DEFAULT_DISPLAY.colours.values())) == len(TABLE_ORDER)
    assert DEFAULT_DISPLAY.colours["Meta-LSTM"] == to_rgb("tab:red")
    assert not set(DEFAULT_DISPLAY.spare_colours) & set(DEFAULT_DISPLAY.colours.values())


def test_a_variant_sorts_after_its_method_and_an_unlisted_method_after_every_listed_one():
    names = ["Zeta", "ProtoNet", "MAML (meta-batch 4)", "Alpha", "MAML", "Baseline-NN"]
    assert sorted(names, key=DEFAULT_DISPLAY.sort_key) == [
        "Baseline-NN",
        "MAML",
        "MAML (meta-batch 4)",
        "ProtoNet",
        "Alpha",
        "Zeta",
    ]


def test_an_unlisted_method_takes_a_spare_colour_and_a_listed_one_its_own():
    styles = method_styles(["ProtoNet", "NewMethod"])
    assert styles["ProtoNet"].color == to_rgb("tab:orange")
    assert styles["NewMethod"].color == DEFAULT_DISPLAY.spare_colours[0]


def test_a_folders_methods_list_orders_its_rows_and_colours_its_figures(tmp_path, capsys):
    write_run(tmp_path / "a", "ProtoNet", A)
    write_run(tmp_path / "b", "MAML", B)
    write_run(tmp_path / "c", "Baseline-NN", C)
    assert ordered_methods(build_cells(load_runs([tmp_path]))) == ["Baseline-NN", "MAML", "ProtoNet"]
    (tmp_path / "report.yaml").write_text(
        "methods:\n  - {name: ProtoNet, colour: '#000000'}\n  - {name: MAML, colour: black}\n"
    )
    assert report_main([str(tmp_path)]) == 0
    assert "(its own methods list)" in capsys.readouterr().out
    rows = [line.split(" |")[0][2:] for line in (tmp_path / "report" / "table.md").read_text().splitlines()[2:5]]
    assert rows == ["ProtoNet", "MAML", "Baseline-NN"]  # listed first, in its order; the others after
    display = read_folder_options([tmp_path]).display
    styles = method_styles(["ProtoNet", "MAML", "Baseline-NN"], display)
    assert styles["MAML"].color == (0.0, 0.0, 0.0) and styles["Baseline-NN"].color == display.spare_colours[0]


def test_the_methods_file_is_read_as_data(tmp_path):
    path = tmp_path / "methods.yaml"
    path.write_text("methods:\n  - {name: B, colour: red}\n  - {name: A, colour: blue}\nspare_colours: [green]\n")
    display = load_default_display(path)
    assert display.order == ("B", "A") and display.colours["A"] == to_rgb("blue")
    assert display.spare_colours == (to_rgb("green"),)


@pytest.mark.parametrize(
    "methods, spare, problem",
    [
        (None, [], "methods must be a non-empty list"),
        ([{"name": "A", "colour": "red", "order": 1}], [], "each method is {name: <table name>, colour:"),
        ([{"name": "A", "colour": 3}], [], "A: colour 3 is not a matplotlib colour"),
        ([{"name": "A", "colour": "red"}], "green", "spare_colours must be a list of matplotlib colours"),
        ([{"name": "A", "colour": "red"}], ["nocolour"], "spare_colours: colour 'nocolour' is not a matplotlib"),
    ],
)
def test_a_bad_methods_list_is_refused_naming_the_problem(methods, spare, problem):
    with pytest.raises(MethodDisplayError, match="^src: ") as err:
        method_display(methods, spare, "src")
    assert problem in str(err.value)
