"""The report's note on CPU speed: runs whose CPU-minutes bought different amounts of work are named."""

from __future__ import annotations

import csv
import io

from fewshot.reporting.build import main as report_main
from fewshot.reporting.runs import load_runs
from fewshot.reporting.speed import speed_note
from fewshot.reporting.table import build_cells, csv_table
from tests.reporting.test_report import A, B, C, write_run


def probe(median: float, low: float | None = None, high: float | None = None) -> dict[str, object]:
    """A results file's ``hardware`` block with a speed probe of these figures."""
    low, high = low or median, high or median
    history = [{"step": 0, "cpu_ms": low}, {"step": 5, "cpu_ms": median}, {"step": 9, "cpu_ms": high}]
    return {"speed_probe": {"median_ms": median, "min_ms": low, "max_ms": high, "history": history}}


def test_no_note_where_no_run_was_probed(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A)
    write_run(tmp_path / "b", "MAML", B, hardware={"cpu_count": 2})
    runs = load_runs([tmp_path])
    assert speed_note(runs, ["toy 5-way 1-shot"]) == ""
    assert report_main([str(tmp_path)]) == 0
    assert "CPU speed" not in (tmp_path / "report" / "table.md").read_text()


def test_runs_slower_than_the_fastest_by_more_than_the_spread_are_named(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A, hardware=probe(40.0))
    write_run(tmp_path / "b", "MAML", B, hardware=probe(100.0))  # 2.5x: named
    write_run(tmp_path / "c", "Baseline-NN", C, hardware=probe(48.0))  # 1.2x: within the spread
    write_run(tmp_path / "d", "Siamese", C)  # made before the probe existed
    note = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"])
    assert note.splitlines()[-1] == (
        "- toy 5-way 1-shot: 3 of 4 runs probed, medians 40.0 to 100.0 ms; slower than the fastest by more "
        "than 1.25x: MAML seed 0 (2.50x)"
    )
    assert report_main([str(tmp_path)]) == 0
    assert note in (tmp_path / "report" / "table.md").read_text()


def test_a_run_whose_speed_changed_while_it_trained_is_named(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A, hardware=probe(40.0, low=38.0, high=95.0))
    write_run(tmp_path / "b", "MAML", B, hardware=probe(42.0))
    line = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"]).splitlines()[-1]
    assert line == (
        "- toy 5-way 1-shot: 2 of 2 runs probed, medians 40.0 to 42.0 ms; speed changed within ProtoNet seed 0"
    )


def test_settings_are_judged_separately(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A, hardware=probe(40.0))
    write_run(tmp_path / "b", "ProtoNet", A, n_shot=5, hardware=probe(100.0))  # another column: not compared
    note = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot", "toy 5-way 5-shot"])
    assert "slower than the fastest" not in note
    assert "- toy 5-way 5-shot: 1 of 1 runs probed, median 100.0 ms\n" in note


def test_table_csv_has_the_median_probe_of_each_cell(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A, hardware=probe(40.0))
    write_run(tmp_path / "b", "ProtoNet", A, seed=1, hardware=probe(60.0))
    write_run(tmp_path / "c", "MAML", B)
    rows = {r["method"]: r for r in csv.DictReader(io.StringIO(csv_table(build_cells(load_runs([tmp_path])))))}
    assert rows["ProtoNet"]["speed_probe_ms"] == "50.00"
    assert rows["MAML"]["speed_probe_ms"] == ""


def test_seeds_whose_cpu_seconds_per_step_differ_are_named_without_a_probe(tmp_path):
    # the committed Meta-LSTM seeds: the same code took 0.74 and 1.86 CPU-seconds per episode
    write_run(tmp_path / "a", "Meta-LSTM", A, seed=0, train={"steps": 4000, "cpu_s": 2960.0})
    write_run(tmp_path / "b", "Meta-LSTM", A, seed=1, train={"steps": 4000, "cpu_s": 7440.0})
    write_run(tmp_path / "c", "ProtoNet", B, seed=0, train={"steps": 1000, "cpu_s": 600.0})
    write_run(tmp_path / "d", "ProtoNet", B, seed=1, train={"steps": 1100, "cpu_s": 700.0})  # 1.06x: same speed
    note = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"])
    assert note.splitlines()[2:] == [
        "- toy 5-way 1-shot, Meta-LSTM: the seeds took 0.74 (seed 0) to 1.86 (seed 1) CPU-seconds per training "
        "step, 2.51x, for the same work per step"
    ]
    assert report_main([str(tmp_path)]) == 0
    assert note in (tmp_path / "report" / "table.md").read_text()


def test_a_single_seed_or_unrecorded_cpu_time_gives_no_pace_line(tmp_path):
    write_run(tmp_path / "a", "Meta-LSTM", A, seed=0, train={"steps": 4000, "cpu_s": 2960.0})
    write_run(tmp_path / "b", "Meta-LSTM", A, seed=1, train={"steps": 0, "cpu_s": 10.0})
    write_run(tmp_path / "c", "ProtoNet", B, seed=0, train={"steps": 10})
    assert speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"]) == ""
