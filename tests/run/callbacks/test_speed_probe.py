"""The CPU speed probe: a fixed workload's CPU time, recorded at the start and after each validation."""

from __future__ import annotations

import json

import pytest
import torch

from fewshot.run.callbacks.speed_probe import CpuSpeedProbe, probe_cpu_ms
from fewshot.run.training import train
from tests.conftest import compose_config


def test_probe_times_the_workload_on_one_thread_and_restores_the_thread_count():
    threads = torch.get_num_threads()
    state = torch.random.get_rng_state()
    ms = probe_cpu_ms(repeats=3, passes=1)
    assert 0.05 < ms < 5000  # a 64-channel conv layer's forward and backward: milliseconds, not nothing
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), state)  # its own generator: training's draws unchanged
    assert probe_cpu_ms(repeats=1, passes=4) > probe_cpu_ms(repeats=1, passes=1) / 2


@pytest.mark.parametrize("repeats, passes", [(0, 3), (3, 0), (-1, 1)])
def test_probe_refuses_empty_workloads(repeats, passes):
    with pytest.raises(ValueError, match="repeats >= 1 and passes >= 1"):
        probe_cpu_ms(repeats, passes)
    with pytest.raises(ValueError, match="callbacks.speed_probe"):
        CpuSpeedProbe(repeats, passes)


def test_probe_state_survives_a_checkpoint_and_summarises_its_measurements():
    probe = CpuSpeedProbe(repeats=1, passes=1)
    probe.history = [{"step": 0, "cpu_ms": 10.0}, {"step": 5, "cpu_ms": 30.0}, {"step": 9, "cpu_ms": 12.0}]
    restored = CpuSpeedProbe()
    restored.load_state_dict(probe.state_dict())
    assert restored.history == probe.history
    summary = restored.summary()
    assert (summary["median_ms"], summary["min_ms"], summary["max_ms"]) == (12.0, 10.0, 30.0)
    assert summary["history"] == probe.history and "one thread" in summary["workload"]
    assert CpuSpeedProbe().summary()["median_ms"] is None


def test_a_run_records_a_probe_at_the_start_and_after_every_validation(tmp_path):
    overrides = ["debug=tiny", "trainer=cpu", "logger=none", "trainer.max_epochs=3", "data.train_episodes=2"]
    train(compose_config(overrides + ["callbacks.speed_probe.repeats=1", "callbacks.speed_probe.passes=1"], tmp_path))
    probe = json.loads((tmp_path / "results.json").read_text())["hardware"]["speed_probe"]
    assert [m["step"] for m in probe["history"]] == [0, 2, 4, 6]  # start, then 3 validations (not the sanity check)
    assert all(m["cpu_ms"] > 0 for m in probe["history"])
    assert probe["min_ms"] <= probe["median_ms"] <= probe["max_ms"]


def test_a_run_without_the_probe_has_no_speed_record(tmp_path):
    train(compose_config(["debug=tiny", "trainer=cpu", "logger=none", "callbacks.speed_probe=null"], tmp_path))
    assert "speed_probe" not in json.loads((tmp_path / "results.json").read_text())["hardware"]
