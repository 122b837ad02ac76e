"""The report command: comparison table, paired test, refusals, plots and W&B logging."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fewshot.evaluation.stats import mean_ci95
from fewshot.reporting.build import main as report_main
from fewshot.reporting.paired import EpisodeMismatchError, paired_difference
from fewshot.reporting.readme import read_block, readme_block
from fewshot.reporting.results import format_accuracy
from fewshot.reporting.runs import load_runs
from fewshot.reporting.table import build_cells, checkpoint_note, csv_table, markdown_table, markdown_training
from tests.helpers import wandb_run_bytes
from tests.training.test_train import run_train

A = [1.0, 0.8, 0.6, 0.8]  # mean 0.8, CI 1.96 * 0.1633 / 2 = 0.1600
B = [0.6, 0.6, 0.6, 0.2]  # mean 0.5, CI 1.96 * 0.2 / 2 = 0.1960: overlaps A's CI
C = [0.2, 0.2, 0.2, 0.2]  # mean 0.2, CI 0: clearly worse


def write_run(
    folder: Path,
    method: str,
    episode_acc: list[float],
    n_shot: int = 1,
    seed: int = 0,
    fingerprint: str = "f" * 64,
    **extra: object,
) -> Path:
    """A results.json as train.py writes it, with known per-episode accuracies."""
    acc, ci95 = mean_ci95(episode_acc)
    results = {
        "method": method,
        "dataset": "toy",
        "n_way": 5,
        "n_shot": n_shot,
        "seed": seed,
        "train": {"steps": 100, "epochs": 1, "cpu_s": 120.0},
        "test": {
            "acc": acc,
            "ci95": ci95,
            "episodes": len(episode_acc),
            "fingerprint": fingerprint,
            "episode_index": list(range(len(episode_acc))),
            "episode_acc": episode_acc,
        },
        **extra,
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def three_methods(tmp_path: Path) -> Path:
    """Runs of three methods on the same four test episodes."""
    write_run(
        tmp_path / "a",
        "ProtoNet",
        A,
        val_history=[
            {"step": 10, "epoch": 0, "acc": 0.5, "ci95": 0.1, "cpu_s": 30.0},
            {"step": 20, "epoch": 1, "acc": 0.7, "ci95": 0.1, "cpu_s": 60.0},
        ],
    )
    write_run(tmp_path / "b", "MAML", B)
    write_run(tmp_path / "c", "Baseline-NN", C)
    return tmp_path


def test_table_has_exact_numbers_best_bold_and_overlapping_cis_bold(three_methods):
    table = markdown_table(build_cells(load_runs([three_methods])))
    lines = table.splitlines()
    assert lines[0] == "| method | toy 5-way 1-shot |"
    # paper order: Baseline-NN, MAML, ProtoNet
    assert lines[2] == "| Baseline-NN | 20.00 ± 0.00 |"
    assert lines[3] == "| MAML | **50.00 ± 19.60** |"
    assert lines[4] == "| ProtoNet | **80.00 ± 16.00** |"


def test_a_variant_gets_its_own_row_right_after_its_method(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A)
    write_run(tmp_path / "b", "MAML (meta-batch 4)", B)
    write_run(tmp_path / "c", "MAML", C)
    write_run(tmp_path / "d", "Baseline-NN", C)
    rows = [line.split(" |")[0][2:] for line in markdown_table(build_cells(load_runs([tmp_path]))).splitlines()[2:]]
    assert rows == ["Baseline-NN", "MAML", "MAML (meta-batch 4)", "ProtoNet"]


def test_table_says_which_checkpoint_each_method_tested(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A, test_checkpoint="best")
    write_run(tmp_path / "b", "Meta-LSTM", B, test_checkpoint="last")
    write_run(tmp_path / "c", "MAML", C)  # written before the key existed: the best was tested
    cells = build_cells(load_runs([tmp_path]))
    assert checkpoint_note(cells) == (
        "\nTested checkpoint: best on validation, except Meta-LSTM (last) (last = the final weights: the run's "
        "test_checkpoint=last, or no best-on-validation checkpoint was saved).\n"
    )
    rows = {line.split(",")[0]: line.split(",") for line in csv_table(cells).splitlines()}
    column = rows["method"].index("test_checkpoint")
    assert [rows[m][column] for m in ("ProtoNet", "Meta-LSTM", "MAML")] == ["best", "last", "best"]


def test_paired_difference_matches_hand_computation(three_methods):
    runs = load_runs([three_methods])
    a = [r for r in runs if r.method == "ProtoNet"]
    b = [r for r in runs if r.method == "MAML"]
    diff = paired_difference(a, b)  # d = [0.4, 0.2, 0.0, 0.6]
    std = math.sqrt((0.1**2 + 0.1**2 + 0.3**2 + 0.3**2) / 3)
    assert diff.episodes == 4
    assert diff.mean == pytest.approx(0.3)
    assert diff.ci95 == pytest.approx(1.96 * std / 2)
    assert diff.p_value == pytest.approx(math.erfc((0.3 / (std / 2)) / math.sqrt(2)))
    assert diff.significant


def test_report_writes_table_paired_csv_and_no_step_plot(three_methods, capsys):
    assert report_main([str(three_methods)]) == 0
    out = three_methods / "report"
    csv_lines = (out / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("method,setting,dataset,n_way,n_shot,acc,ci95,episodes,seeds")
    assert csv_lines[1].startswith("Baseline-NN,toy 5-way 1-shot,toy,5,1,0.200000,0.000000,4,1,,0,0,100,2.00")
    paired = (out / "paired.md").read_text()
    assert "| toy 5-way 1-shot | ProtoNet | MAML | 4 | 1, 1 | +30.00 ± 25.30 |" in paired
    assert "| toy 5-way 1-shot | ProtoNet | Baseline-NN | 4 | 1, 1 | +60.00 ± 16.00 |" in paired
    assert not (out / "accuracy_vs_step.png").exists()  # a step is other work per method: time instead
    assert not (out / "accuracy_vs_shots.png").exists()  # one K per method: nothing to plot
    assert (out / "accuracy_vs_cpu_time.png").stat().st_size > 5_000
    assert "**80.00 ± 16.00**" in capsys.readouterr().out


def test_training_table_says_cpu_minutes_and_what_stopped_each_run(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A, train={"steps": 9, "cpu_s": 600.0, "stopped_by": "plateau"})
    write_run(tmp_path / "b", "MAML", B, train={"steps": 9, "cpu_s": 3600.0, "stopped_by": "cpu_budget"})
    write_run(tmp_path / "c", "MAML", B, seed=1, train={"steps": 9, "cpu_s": 1800.0, "stopped_by": "plateau"})
    write_run(tmp_path / "d", "Baseline-NN", C)  # written before stopped_by existed
    table = markdown_training(build_cells(load_runs([tmp_path])))
    assert table.splitlines()[2:] == [
        "| Baseline-NN | 2 min, not recorded |",
        "| MAML | 45 min, 1/2 CPU cap, 1/2 plateau |",
        "| ProtoNet | 10 min, plateau |",
    ]
    assert report_main([str(tmp_path)]) == 0
    assert "| ProtoNet | 10 min, plateau |" in (tmp_path / "report" / "table.md").read_text()


def rising(points_per_validation: float, count: int = 6) -> list[dict[str, float]]:
    """A validation history rising by a fixed amount every 5 CPU-minutes."""
    return [{"acc": 0.5 + points_per_validation * i / 100, "cpu_s": 300.0 * (i + 1)} for i in range(count)]


def test_training_table_gives_the_late_validation_trend_averaged_over_seeds(tmp_path):
    cap = {"steps": 9, "cpu_s": 3600.0, "stopped_by": "cpu_budget"}
    write_run(tmp_path / "a", "MAML", B, train=cap, val_history=rising(1.0))
    write_run(tmp_path / "b", "MAML", B, seed=1, train=cap, val_history=rising(2.0))
    write_run(tmp_path / "c", "ProtoNet", A, train=cap, val_history=rising(0.0))
    write_run(tmp_path / "d", "Baseline-NN", C, train=cap, val_history=rising(1.0, count=4))  # too short
    cells = build_cells(load_runs([tmp_path]))
    assert markdown_training(cells).splitlines()[2:] == [
        "| Baseline-NN | 60 min, CPU cap |",
        "| MAML | 60 min, CPU cap, +3.0 ± 0.0/10 min |",
        "| ProtoNet | 60 min, CPU cap, +0.0 ± 0.0/10 min |",
    ]
    rows = {line.split(",")[0]: line.split(",") for line in csv_table(cells).splitlines()}
    slope, ci = rows["method"].index("val_trend_per_10_cpu_min"), rows["method"].index("val_trend_ci95")
    assert [(rows[m][slope], rows[m][ci]) for m in ("MAML", "ProtoNet", "Baseline-NN")] == [
        ("3.000", "0.000"),
        ("0.000", "0.000"),
        ("", ""),
    ]


def test_against_tests_one_method_against_every_other(three_methods, capsys):
    assert report_main([str(three_methods), "--against", "MAML"]) == 0
    paired = (three_methods / "report" / "paired.md").read_text()
    # ProtoNet (the best) - MAML is already there: each pair once
    assert (
        paired.count("| MAML |") == 2 and "| toy 5-way 1-shot | ProtoNet | MAML | 4 | 1, 1 | +30.00 ± 25.30 |" in paired
    )
    assert "| toy 5-way 1-shot | MAML | Baseline-NN | 4 | 1, 1 | +30.00 ± 19.60 |" in paired
    assert report_main([str(three_methods), "--against", "Nope"]) == 2
    assert "--against Nope: no such method" in capsys.readouterr().err


def marked(source: str, content: str = "old\n") -> str:
    """A Markdown file with a block marked for ``source`` between a heading and a tail."""
    return f"# x\n<!-- report {source}: begin -->\n{content}<!-- report {source}: end -->\ntail\n"


def test_readme_block_is_rewritten_with_the_accuracy_table_and_a_link_to_the_rest(three_methods, tmp_path, capsys):
    readme = tmp_path / "README.md"
    source = str(three_methods)
    readme.write_text(marked(source))
    assert report_main([source, "--readme", str(readme)]) == 0
    table = markdown_table(build_cells(load_runs([three_methods])))
    link = "[report/table.md](report/table.md)"  # no page: the report's own table.md, relative to the README
    block = f"{table}\nHow each run trained and stopped, tested checkpoints, paired tests, figures: {link}.\n"
    assert readme.read_text() == marked(source, block)
    assert report_main([source, "--readme", str(readme)]) == 0
    assert "unchanged" in capsys.readouterr().out


def test_the_page_gets_every_table_paired_test_and_figure_and_the_readme_links_to_it(three_methods, tmp_path, capsys):
    source = str(three_methods)
    readme, page = tmp_path / "README.md", tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    readme.write_text(marked(source))
    page.write_text(marked(source))
    assert report_main([source, "--readme", str(readme), "--page", str(page)]) == 0
    report = three_methods / "report"
    expected = (
        (report / "table.md").read_text()
        + "\n### Paired tests\n\n"
        + (report / "paired.md").read_text()
        + "\n### Figures\n\n"
        + "![Validation accuracy against time (time to accuracy)](../report/accuracy_vs_cpu_time.png)\n\n"
    )
    assert page.read_text() == marked(source, expected)
    assert read_block(readme.read_text(), source) == readme_block(
        markdown_table(build_cells(load_runs([three_methods]))), "docs/results.md"
    )
    out = capsys.readouterr().out
    assert f"updated: the results of {source} in {page}" in out and f"updated: the table of {source} in {readme}" in out


def test_a_page_without_the_markers_is_refused_before_anything_is_written(three_methods, tmp_path, capsys):
    readme, page = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text(marked(str(three_methods)))
    page.write_text("# no markers\n")
    assert report_main([str(three_methods), "--readme", str(readme), "--page", str(page)]) == 2
    assert f"{page}: no block marked '<!-- report {three_methods}: begin" in capsys.readouterr().err
    assert page.read_text() == "# no markers\n" and readme.read_text() == marked(str(three_methods))
    assert not (three_methods / "report").exists()


def test_readme_without_the_markers_is_refused_naming_them(three_methods, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    assert report_main([str(three_methods), "--readme", str(readme)]) == 2
    assert f"no block marked '<!-- report {three_methods}: begin" in capsys.readouterr().err
    assert readme.read_text() == "# no markers\n"


def test_time_to_accuracy_plot_from_cpu_time_in_the_validation_history(tmp_path):
    history = [{"step": 10, "epoch": 0, "acc": 0.5, "ci95": 0.1, "cpu_s": 30.0}]
    write_run(tmp_path / "a", "ProtoNet", A, val_history=history + [{**history[0], "step": 20, "cpu_s": 60.0}])
    write_run(tmp_path / "b", "MAML", B, val_history=[{k: v for k, v in history[0].items() if k != "cpu_s"}])
    assert report_main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "accuracy_vs_cpu_time.png").stat().st_size > 5_000


def test_seeds_are_aggregated_with_their_spread(tmp_path):
    write_run(tmp_path / "s0", "ProtoNet", [1.0, 0.8, 0.6, 0.8], seed=0)  # 0.8
    write_run(tmp_path / "s1", "ProtoNet", [0.6, 0.6, 0.6, 0.6], seed=1)  # 0.6
    cells = build_cells(load_runs([tmp_path]))
    assert len(cells) == 1
    cell = cells[0]
    assert cell.acc == pytest.approx(0.7) and cell.seed_std == pytest.approx(math.sqrt(0.02))
    assert "(sd 14.14, 2 seeds)" in markdown_table(cells)


def test_report_refuses_to_pair_runs_on_different_episodes(tmp_path, capsys):
    write_run(tmp_path / "a", "ProtoNet", A, fingerprint="a" * 64)
    write_run(tmp_path / "b", "MAML", B, fingerprint="b" * 64)
    runs = load_runs([tmp_path])
    with pytest.raises(EpisodeMismatchError, match="fingerprints differ.*same data config"):
        paired_difference(runs[:1], runs[1:])
    # the report pairs nothing across them and says so (tests/reporting/test_paired_seeds.py)
    assert report_main([str(tmp_path), "--pair", "ProtoNet", "MAML"]) == 0
    assert (
        "ProtoNet (episodes aaaaaaaa) and MAML (episodes bbbbbbbb)" in (tmp_path / "report" / "paired.md").read_text()
    )


def test_report_refuses_seeds_of_one_method_on_different_episodes(tmp_path, capsys):
    write_run(tmp_path / "s0", "ProtoNet", A, seed=0, fingerprint="a" * 64)
    write_run(tmp_path / "s1", "ProtoNet", B, seed=1, fingerprint="b" * 64)
    assert report_main([str(tmp_path)]) == 2
    assert "fingerprints differ" in capsys.readouterr().err


def test_report_refuses_two_runs_of_one_seed_instead_of_counting_them_as_two_seeds(tmp_path, capsys):
    write_run(tmp_path / "trained", "ProtoNet", A, seed=0)
    write_run(tmp_path / "retested", "ProtoNet", B, seed=0)  # e.g. a test-only run of the same checkpoint
    write_run(tmp_path / "other", "ProtoNet", A, seed=1)
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "ProtoNet in toy 5-way 1-shot has 2 runs of seed 0" in err and "variant=" in err, err
    assert str(tmp_path / "retested" / "results.json") in err


def test_report_on_unknown_pair_names_the_methods_found(three_methods, capsys):
    assert report_main([str(three_methods), "--pair", "ProtoNet", "Reptile"]) == 2
    assert "Methods found: Baseline-NN, MAML, ProtoNet" in capsys.readouterr().err


def test_report_on_a_corrupt_results_file_names_it(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.json").write_text("{ not json")
    assert report_main([str(tmp_path)]) == 2
    assert "Cannot read" in capsys.readouterr().err


def test_accuracy_vs_shots_plot_from_eval_shots(tmp_path):
    shots = {"1": {"acc": 0.5, "ci95": 0.05}, "5": {"acc": 0.8, "ci95": 0.04}}
    write_run(tmp_path / "a", "ProtoNet", A, n_shot=5)
    data = json.loads((tmp_path / "a" / "results.json").read_text())
    data["test"]["shots"] = shots
    (tmp_path / "a" / "results.json").write_text(json.dumps(data))
    assert report_main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / "accuracy_vs_shots.png").stat().st_size > 5_000


def test_report_logs_table_and_figures_to_an_offline_wandb_run(three_methods, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    assert report_main([str(three_methods), "--wandb"]) == 0
    runs = list((three_methods / "report" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    keys = (b"comparison", b"figures/accuracy_vs_cpu_time", b"toy 5-way 1-shot/ProtoNet/acc")
    logged = wandb_run_bytes(runs[0], keys)
    for key in keys:
        assert key in logged


def test_multirun_of_two_methods_and_two_shots_is_reported_end_to_end(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    out = run_train(
        "-m",
        "debug=tiny",
        "trainer=cpu",
        "logger=none",
        "model=protonet,matchingnet",  # with checkpoints: each run tests its best (callbacks=none tests the last)
        "data.n_shot=1,2",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert report_main([str(sweep)]) == 0
    table = (sweep / "report" / "table.md").read_text().splitlines()
    assert table[0] == "| method | embedded_tiny 5-way 1-shot | embedded_tiny 5-way 2-shot |"
    assert [line.split(" |")[0] for line in table[2:4]] == ["| MatchingNet", "| ProtoNet"]
    assert table[4:7] == ["", "Every run was tested with its best-on-validation checkpoint.", ""]
    assert all("±" in cell for line in table[2:4] for cell in line.split("|")[2:4])
    assert table[7].startswith("| training: CPU time, stopped by, validation trend | embedded_tiny 5-way 1-shot |")
    assert all(", epoch cap" in cell for line in table[9:11] for cell in line.split("|")[2:4])
    assert (sweep / "report" / "accuracy_vs_shots.png").stat().st_size > 5_000


def crafted(tmp_path: Path, change) -> Path:
    """A valid results.json of A's episodes, then ``change(results)`` applied to it."""
    folder = write_run(
        tmp_path / "run", "ProtoNet", A, val={"acc": 0.7}, val_history=[{"epoch": 0, "step": 100, "acc": 0.7}]
    )
    data = json.loads((folder / "results.json").read_text())
    change(data)
    (folder / "results.json").write_text(json.dumps(data))
    return folder / "results.json"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d["test"].update(acc=float("nan")), "test.acc is nan"),
        (lambda d: d["test"].update(ci95=1.7), "test.ci95 is 1.7, outside [0, 1]"),
        (lambda d: d["test"].update(acc=0.9), "test.acc is 0.9 but the mean of test.episode_acc is 0.800000"),
        (lambda d: d["test"].update(episodes=600), "test.episodes is 600 but test.episode_acc has 4 entries"),
        (lambda d: d["test"]["episode_acc"].__setitem__(1, -0.2), "test.episode_acc[1] is -0.2, outside [0, 1]"),
        (lambda d: d["test"].update(episode_index=[0, 0, 1, 2]), "test.episode_index has 4 entries (or repeats)"),
        (lambda d: d["val"].update(acc=0.95), "val.acc (the best) is 0.95 but the best in val_history is 0.7"),
        (lambda d: d["val_history"][0].update(acc=float("nan")), "val_history[0].acc is nan"),
        (lambda d: d["test"].update(shots={"1": {"acc": float("inf"), "ci95": 0.1}}), "test.shots[1].acc is inf"),
    ],
)
def test_report_refuses_an_inconsistent_results_file_naming_it(tmp_path, capsys, change, problem):
    path = crafted(tmp_path, change)
    assert report_main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{path} does not add up" in err and problem in err, err


def test_report_accepts_a_consistent_results_file(tmp_path):
    crafted(tmp_path, lambda d: None)
    assert report_main([str(tmp_path), "--out", str(tmp_path / "r")]) == 0


def test_a_folders_report_yaml_gives_its_default_options(three_methods, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the project: report.yaml names its README relative to it
    readme = tmp_path / "README.md"
    source = str(three_methods)
    readme.write_text(f"<!-- report {source}: begin -->\nold\n<!-- report {source}: end -->\n")
    (tmp_path / "results.md").write_text(readme.read_text())
    (three_methods / "report.yaml").write_text("against: [MAML]\nreadme: README.md\npage: results.md\n")
    assert report_main([source]) == 0
    out = capsys.readouterr().out
    assert f"options from {three_methods / 'report.yaml'}: --against MAML --readme README.md --page results.md" in out
    paired = (three_methods / "report" / "paired.md").read_text()
    assert "| toy 5-way 1-shot | MAML | Baseline-NN | 4 | 1, 1 | +30.00 ± 19.60 |" in paired
    table = (three_methods / "report" / "table.md").read_text()
    assert read_block(readme.read_text(), source).startswith(table.split("\n\n")[0])
    assert "[results.md](results.md)" in read_block(readme.read_text(), source)
    assert read_block((tmp_path / "results.md").read_text(), source).startswith(table)
    # the command line adds to them; a report over several folders reads no folder's options
    assert report_main([source, "--against", "Nope", "--out", str(tmp_path / "r2")]) == 2
    captured = capsys.readouterr()
    assert "--against MAML" in captured.out and "--against Nope: no such method" in captured.err
    each_run = [str(three_methods / run) for run in ("a", "b", "c")]
    assert report_main([*each_run, "--out", str(tmp_path / "r3")]) == 0
    assert "| MAML | Baseline-NN |" not in (tmp_path / "r3" / "paired.md").read_text()


@pytest.mark.parametrize(
    "text, problem",
    [
        ("against: [MAML\n", "is not valid YAML"),
        ("- MAML\n", "must be a mapping of against, readme, page, pair, methods; got list"),
        ("agains: [MAML]\n", "unknown keys ['agains']; the keys are against, readme, page, pair, methods"),
        ("against: MAML\n", "against must be a list of method names, e.g. [Meta-LSTM]; got 'MAML'"),
        ("readme: [a, b]\n", "readme must be a file name"),
        # issue 37, item 1: a path from a file's content stays inside the project
        ("readme: ../../elsewhere/README.md\n", "readme must be a path inside the project (relative, no ..)"),
        ("readme: /etc/README.md\n", "readme must be a path inside the project"),
        ("readme: ~/README.md\n", "readme must be a path inside the project"),
        ("page: [a]\n", "page must be a file name, e.g. docs/results.md"),
        ("page: ../results.md\n", "page must be a path inside the project (relative, no ..)"),
        ("methods: ProtoNet\n", "methods must be a non-empty list of {name: ..., colour: ...}"),
        ("methods: []\n", "methods must be a non-empty list"),
        ("methods: [{name: ProtoNet}]\n", "each method is {name: <table name>, colour: <matplotlib colour>}"),
        ("methods: [{name: ProtoNet, colour: nocolour}]\n", "ProtoNet: colour 'nocolour' is not a matplotlib colour"),
        (
            "methods: [{name: MAML, colour: red}, {name: MAML, colour: blue}]\n",
            "method 'MAML' is listed twice; list each method once",
        ),
        ("pair: [[ProtoNet]]\n", "pair must be a list of [A, B] method pairs"),
    ],
)
def test_a_bad_report_yaml_is_refused_naming_the_file_and_the_problem(three_methods, capsys, text, problem):
    (three_methods / "report.yaml").write_text(text)
    assert report_main([str(three_methods)]) == 2
    err = capsys.readouterr().err
    assert str(three_methods / "report.yaml") in err and problem in err
    assert not (three_methods / "report").exists()


def test_a_single_episode_has_no_interval_and_says_so():
    assert format_accuracy(0.0667, float("nan")) == "6.67 ± n/a"
    assert format_accuracy(0.9285, 0.0046) == "92.85 ± 0.46"


def test_a_symlinked_run_folder_is_reported_and_a_looping_link_is_named(tmp_path, capsys, caplog):
    """Issue 37, item 10: the report follows symlinked run folders (each run once, loops skipped by name)."""
    runs, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    write_run(runs / "a", "ProtoNet", A)
    write_run(elsewhere / "b", "MAML", B)
    (runs / "b").symlink_to(elsewhere / "b", target_is_directory=True)
    (runs / "b-again").symlink_to(elsewhere / "b", target_is_directory=True)
    (elsewhere / "b" / "up").symlink_to(elsewhere, target_is_directory=True)
    assert report_main([str(runs), "--out", str(tmp_path / "report")]) == 0
    assert "2 run(s) found" in capsys.readouterr().out
    assert f"skipped {runs / 'b' / 'up'}: a link to {elsewhere.resolve()}, a folder it lies in" in caplog.text


def test_a_one_episode_cell_without_interval_is_shown_as_n_a_and_a_tie_with_it_is_bold():
    from fewshot.reporting.table import Cell, cell_text, mark_best

    top = Cell("ProtoNet", "toy", (), acc=0.5, ci95=float("nan"), seed_std=None)
    tied = Cell("MAML", "toy", (), acc=0.5 - 0.01, ci95=0.196, seed_std=None)
    apart = Cell("Reptile", "toy", (), acc=0.2, ci95=0.05, seed_std=None)
    marked = {c.method: c for c in mark_best([top, tied, apart])}
    assert marked["ProtoNet"].best and marked["MAML"].overlaps_best and not marked["Reptile"].bold
    assert "± n/a" in cell_text(marked["ProtoNet"])
