"""Collecting runs into a committable results folder: no machine paths, the same report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from fewshot.reporting.build import build_report
from fewshot.reporting.collect import main as collect_main
from fewshot.training import train
from tests.reporting.test_report import A, write_run


def test_collected_results_hold_no_machine_path_and_report_the_same_table(tiny_config, tmp_path):
    train(tiny_config())
    run = tmp_path  # tiny_config writes the run into tmp_path
    into = tmp_path.parent / f"{tmp_path.name}_committed" / "results"
    assert collect_main([str(run / "results.json"), "--into", str(into)]) == 0
    collected = into / "embedded_tiny_5w1s" / "protonet" / "seed0" / "results.json"
    text = collected.read_text()
    assert str(tmp_path) not in text and str(Path.home()) not in text and str(Path.cwd()) not in text
    data = json.loads(text)
    assert data["output_dir"] == "<run>" and data["checkpoint"].startswith("<run>/checkpoints/")
    assert data["config"]["paths"]["output_dir"] == "<run>"
    assert data["run_name"] == tmp_path.name  # the run's folder: a queue's run name
    table = build_report([collected], tmp_path / "r1")["table_md"]
    assert table == build_report([run / "results.json"], tmp_path / "r2")["table_md"]


def test_two_runs_of_one_setting_method_and_seed_are_refused(tmp_path, capsys):
    write_run(tmp_path / "a", "ProtoNet", A)
    write_run(tmp_path / "b", "ProtoNet", A)
    assert collect_main([str(tmp_path), "--into", str(tmp_path / "out")]) == 2
    assert "same setting, method and seed" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"method": "ProtoNet", "test": {"acc"', "Cannot read .*results.json: "), ("[1, 2]", "holds a JSON list")],
)
def test_collect_reports_a_cut_or_non_object_results_file_in_one_line(tmp_path, capsys, content, message):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(content)
    assert collect_main([str(run), "--into", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.match(f"error: .*{message}", err) and err.count("\n") == 1, err
