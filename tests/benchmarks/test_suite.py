"""The benchmark scripts run end to end and write what docs/benchmarks.md says they write."""

from __future__ import annotations

import json

from benchmarks import meta_lstm, suite


def test_suite_writes_a_row_per_method_with_floor_ratios(tmp_path, capsys):
    out = tmp_path / "suite.json"
    methods = ["ProtoNet", "MAML-1st 1 step", "Meta-LSTM T5"]
    suite.main(["--methods", *methods, "--repeats", "1", "--eval-episodes", "1", "--no-memory", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == methods
    for row in rows:
        assert row["train_per_s"] > 0 and row["train_floor_per_s"] > 0
        assert abs(row["train_ratio"] * row["train_per_s"] - row["train_floor_per_s"]) < 1e-6 * row["train_per_s"]
        assert row["eval_ratio"] > 0
    assert [r["train_unit"] for r in rows] == ["episodes", "tasks", "episodes"]
    assert "Meta-LSTM T5" in capsys.readouterr().out


def test_metalstm_eval_and_memory_measurements_run():
    shape = meta_lstm.SHAPES["omniglot-5w1s-T5"]
    timing = meta_lstm.run_eval(shape, 2, meta_lstm.torch.device("cpu"), "fused")
    assert timing["eval_s"] > 0 and timing["floor_s"] > 0 and timing["episodes"] == 2
    memory = meta_lstm.run_memory(2, True, meta_lstm.torch.device("cpu"))
    assert memory["n_steps"] == 2 and memory["checkpoint"] is True and memory["peak_mib"] >= 0


def test_metalstm_training_measurement_reports_the_plain_module_floor():
    shape = meta_lstm.replace(meta_lstm.SHAPES["omniglot-5w1s-T5"], name="tiny", hidden=4, n_steps=1, n_query=2)
    result = meta_lstm.run_shape(shape, 1, meta_lstm.torch.device("cpu"), "fused")
    assert result["module_floor"] > 0 and result["floor"] > 0 and result["episode"] > 0
    table = meta_lstm._format([result])
    assert "vs nn" in table.splitlines()[0]
    assert f"{result['episode'] / result['module_floor']:.2f}" in table.splitlines()[2]
