"""Paired comparisons over training seeds (issue 36 item 5) and columns of one test-episode set
(issue 37 item 7)."""

from __future__ import annotations

import math

import pytest

from fewshot.reporting.build import main as report_main
from fewshot.reporting.build import tables_markdown
from fewshot.reporting.paired import paired_difference, welch_interval
from fewshot.reporting.runs import load_runs
from fewshot.reporting.table import build_cells, csv_paired, markdown_paired, markdown_table
from fewshot.reporting.trend import t_quantile_95
from tests.reporting.test_report import A, B, C, write_run

# two seeds each; per seed: P 0.75 and 0.625, Q 0.5 and 0.375
P = ([1.0, 1.0, 0.5, 0.5], [1.0, 0.5, 0.5, 0.5])
Q = ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.0, 0.5])


def seeded(tmp_path, method, seeds):
    """Runs of ``method``, one per list of per-episode accuracies (seed 0, 1, ...)."""
    for seed, accuracies in enumerate(seeds):
        write_run(tmp_path / f"{method}{seed}", method, list(accuracies), seed=seed)


def test_welch_interval_matches_hand_computation():
    # both sides: variance of two seeds 0.125 apart is 0.125**2 / 2; over 2 seeds, half that
    interval = welch_interval([0.75, 0.625], [0.5, 0.375])
    assert interval.dof == 2  # (2v)^2 / (v^2 + v^2)
    assert interval.ci95 == pytest.approx(4.303 * math.sqrt(2 * 0.125**2 / 4))
    # unequal spreads and counts: Welch's degrees of freedom, rounded down
    a, b = [0.9, 0.8, 0.7], [0.5, 0.5, 0.6, 0.7]
    va, vb = 0.01 / 3, 0.0275 / 3 / 4  # sample variances 0.01 and 0.0275/3 over their counts
    dof = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 3)  # 4.33
    interval = welch_interval(a, b)
    assert interval.dof == math.floor(dof) == 4
    assert interval.ci95 == pytest.approx(t_quantile_95(4) * math.sqrt(va + vb))


def test_one_seed_on_a_side_gives_no_seed_interval():
    assert welch_interval([0.75, 0.625], [0.5]) is None
    assert welch_interval([0.75], [0.5]) is None


def test_significance_needs_the_difference_outside_the_seed_interval_too(tmp_path):
    seeded(tmp_path, "ProtoNet", P)
    seeded(tmp_path, "MAML", Q)
    runs = load_runs([tmp_path])
    d = paired_difference([r for r in runs if r.method == "ProtoNet"], [r for r in runs if r.method == "MAML"])
    # per episode (seeds averaged): [1, .75, .5, .5] - [.5, .5, .25, .5] = [.5, .25, .25, 0]
    assert d.mean == pytest.approx(0.25)
    assert d.ci95 == pytest.approx(1.96 * math.sqrt(0.125 / 3) / 2)  # 0.20: beyond it over episodes
    assert (d.seeds_a, d.seeds_b) == (2, 2)
    assert d.seed_interval.ci95 == pytest.approx(4.303 * 0.125 / math.sqrt(2))  # 0.38: not over seeds
    assert abs(d.mean) > d.ci95 and not d.significant
    line = markdown_paired([d]).splitlines()[2]
    assert line == "| toy 5-way 1-shot | ProtoNet | MAML | 4 | 2, 2 | +25.00 ± 20.00 | 0.0143 | ± 38.03 (2 df) | no |"
    row = csv_paired([d]).splitlines()[1].split(",")
    assert row[4:6] == ["2", "2"] and row[9:] == ["0.380335", "2", "0"]


def test_a_one_seed_row_says_it_covers_episodes_only(tmp_path):
    seeded(tmp_path, "ProtoNet", P)
    write_run(tmp_path / "maml", "MAML", C)
    assert report_main([str(tmp_path)]) == 0
    paired = (tmp_path / "report" / "paired.md").read_text()
    assert (
        "| toy 5-way 1-shot | ProtoNet | MAML | 4 | 2, 1 | +48.75 ± 23.46 | 4.63e-05 | episodes only | yes |" in paired
    )
    assert "episodes only: a side has one training seed, so the CI, p and significant cover the test episodes only" in (
        paired
    )


def test_a_setting_scored_on_two_episode_sets_is_two_columns_and_never_paired_across(tmp_path, capsys):
    write_run(tmp_path / "a", "ProtoNet", A, fingerprint="a" * 64, hardware={"platform": "host-1"})
    write_run(tmp_path / "b", "MAML", B, fingerprint="b" * 64, hardware={"platform": "host-2"})
    write_run(tmp_path / "c", "Baseline-NN", C, fingerprint="b" * 64)
    cells = build_cells(load_runs([tmp_path]))
    table = tables_markdown(cells).splitlines()
    assert table[0] == "| method | toy 5-way 1-shot (episodes aaaaaaaa) | toy 5-way 1-shot (episodes bbbbbbbb) |"
    # each column has its own best: ProtoNet alone on its episodes, MAML against Baseline-NN on theirs
    assert table[2:5] == [
        "| Baseline-NN | - | 20.00 ± 0.00 |",
        "| MAML | - | **50.00 ± 19.60** |",
        "| ProtoNet | **80.00 ± 16.00** | - |",
    ]
    assert table[6].startswith("Test episodes differ within a setting, so it is split into one column per episode")
    assert table[7] == (
        "- toy 5-way 1-shot: toy 5-way 1-shot (episodes aaaaaaaa): ProtoNet; "
        "toy 5-way 1-shot (episodes bbbbbbbb): Baseline-NN, MAML"
    )
    # the speed note still speaks of the setting as a whole
    assert "- toy 5-way 1-shot: trained on 2 platforms: host-1 (ProtoNet seed 0); host-2 (MAML seed 0)" in table
    assert report_main([str(tmp_path), "--pair", "ProtoNet", "MAML", "--against", "ProtoNet"]) == 0
    paired = (tmp_path / "report" / "paired.md").read_text()
    rows = [line for line in paired.splitlines() if line.startswith("| toy")]
    assert rows == [
        "| toy 5-way 1-shot (episodes bbbbbbbb) | MAML | Baseline-NN | 4 | 1, 1 | +30.00 ± 19.60 | 0.0027 | "
        "episodes only | yes |"
    ]
    assert paired.endswith(
        "Not paired, scored on different test episodes:\n"
        "- toy 5-way 1-shot: ProtoNet (episodes aaaaaaaa) and MAML (episodes bbbbbbbb)\n"
        "- toy 5-way 1-shot: ProtoNet (episodes aaaaaaaa) and Baseline-NN (episodes bbbbbbbb)\n"
    )


def test_one_episode_set_per_setting_keeps_the_setting_as_the_column(tmp_path):
    write_run(tmp_path / "a", "ProtoNet", A)
    write_run(tmp_path / "b", "MAML", B, n_shot=5, fingerprint="b" * 64)
    cells = build_cells(load_runs([tmp_path]))
    assert markdown_table(cells).splitlines()[0] == "| method | toy 5-way 1-shot | toy 5-way 5-shot |"
    assert "Test episodes differ" not in tables_markdown(cells)
