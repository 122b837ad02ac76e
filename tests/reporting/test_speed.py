"""The report's note on CPU speed: runs whose CPU-minutes bought different amounts of work are named."""

from __future__ import annotations

import csv
import io

from fewshot.reporting.build import main as report_main
from fewshot.reporting.runs import load_runs
from fewshot.reporting.speed import speed_note
from fewshot.reporting.table import build_cells, csv_table
from tests.reporting.test_report import A, B, C, write_run


def probe(median: float, values: list[float] | None = None) -> dict[str, object]:
    """A results file's ``hardware`` block with a speed probe: ``values`` in training order (default:
    three probes of ``median``) and their stated median."""
    values = values or [median] * 3
    history = [{"step": 100 * i, "cpu_ms": v} for i, v in enumerate(values)]
    return {"speed_probe": {"median_ms": median, "min_ms": min(values), "max_ms": max(values), "history": history}}


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
    write_run(tmp_path / "c", "Baseline-NN", C, hardware=probe(58.0))  # 1.45x: within one probe's noise
    write_run(tmp_path / "d", "Siamese", C)  # made before the probe existed
    note = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"])
    assert note.splitlines()[-1] == (
        "- toy 5-way 1-shot: 3 of 4 runs probed, medians 40.0 to 100.0 ms; slower than the fastest by more "
        "than 1.5x: MAML seed 0 (2.50x)"
    )
    assert report_main([str(tmp_path)]) == 0
    assert note in (tmp_path / "report" / "table.md").read_text()


def test_a_run_whose_speed_changed_while_it_trained_is_named(tmp_path):
    # a resume on a slower day: the second half's probes are 2.4x the first half's
    write_run(tmp_path / "a", "ProtoNet", A, hardware=probe(40.0, [38.0, 40.0, 36.0, 95.0, 92.0, 97.0]))
    # single probes up to 1.7x apart (a busy machine's noise), halves alike: not named
    write_run(tmp_path / "b", "MAML", B, hardware=probe(42.0, [30.0, 51.0, 42.0, 29.0, 50.0, 42.0]))
    # too few probes to split into halves: not judged
    write_run(tmp_path / "c", "Siamese", C, seed=0, hardware=probe(41.0, [20.0, 41.0, 90.0]))
    line = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"]).splitlines()[-1]
    assert line == (
        "- toy 5-way 1-shot: 3 of 3 runs probed, medians 40.0 to 42.0 ms; speed changed within ProtoNet seed 0"
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


def test_a_pace_line_names_the_platforms_when_the_seeds_trained_on_different_ones(tmp_path):
    fast, slow = "Linux-6.18.44-fc-v657-x86_64", "Linux-6.18.44-fc-v1045-x86_64"
    write_run(
        tmp_path / "a", "Meta-LSTM", A, seed=0, train={"steps": 4000, "cpu_s": 3640.0}, hardware={"platform": fast}
    )
    write_run(
        tmp_path / "b", "Meta-LSTM", A, seed=1, train={"steps": 4000, "cpu_s": 8640.0}, hardware={"platform": slow}
    )
    write_run(
        tmp_path / "c", "Meta-LSTM", A, seed=2, train={"steps": 4000, "cpu_s": 8520.0}, hardware={"platform": slow}
    )
    platforms, line = speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"]).splitlines()[2:]
    on_slow, on_fast = "Meta-LSTM seed 1, Meta-LSTM seed 2", "Meta-LSTM seed 0"
    assert platforms == f"- toy 5-way 1-shot: trained on 2 platforms: {slow} ({on_slow}); {fast} ({on_fast})"
    assert line.endswith(f"2.37x, for the same work per step; they trained on different platforms ({fast}; {slow})")
    write_run(
        tmp_path / "a", "Meta-LSTM", A, seed=0, train={"steps": 4000, "cpu_s": 3640.0}, hardware={"platform": slow}
    )
    assert "trained on" not in speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"])  # one platform


def test_a_single_seed_or_unrecorded_cpu_time_gives_no_pace_line(tmp_path):
    write_run(tmp_path / "a", "Meta-LSTM", A, seed=0, train={"steps": 4000, "cpu_s": 2960.0})
    write_run(tmp_path / "b", "Meta-LSTM", A, seed=1, train={"steps": 0, "cpu_s": 10.0})
    write_run(tmp_path / "c", "ProtoNet", B, seed=0, train={"steps": 10})
    assert speed_note(load_runs([tmp_path]), ["toy 5-way 1-shot"]) == ""
