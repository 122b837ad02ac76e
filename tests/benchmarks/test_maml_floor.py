"""The MAML benchmark's floor loop computes exactly what the method computes (so the ratio is fair)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.maml import Setting, build_method, floor_step, method_step, random_episode


@pytest.mark.parametrize("setting", [Setting(1, True), Setting(2, False)], ids=lambda s: s.name)
def test_floor_loop_gives_the_methods_meta_gradient(setting):
    torch.manual_seed(0)
    method = build_method(setting)
    episode = random_episode(meta_batch=2, size=28)
    method_step(method, episode)
    ours = {n: p.grad.clone() for n, p in method.learner.named_parameters()}
    floor_step(method.learner, episode, setting)
    for name, p in method.learner.named_parameters():
        torch.testing.assert_close(p.grad, ours[name], rtol=1e-4, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in ours.values())


def test_benchmark_writes_loop_vmap_and_floor_figures(tmp_path):
    import json

    from benchmarks import maml

    out = tmp_path / "maml.json"
    maml.main(["--meta-batch", "2", "--repeats", "1", "--no-memory", "--out", str(out)])
    rows = json.loads(out.read_text())["rows"]
    expected = ["MAML-1st 1 step", "MAML-1st 5 steps", "MAML-2nd 1 step", "MAML-2nd 5 steps"]
    assert [r["setting"] for r in rows] == expected
    for row in rows:
        assert row["ours_tasks_per_s"] > 0 and row["floor_tasks_per_s"] > 0 and row["vmap_tasks_per_s"] > 0


def test_peak_resident_bytes_is_this_process():
    from benchmarks.common import peak_resident_bytes

    before = peak_resident_bytes()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    assert peak_resident_bytes() >= before
    assert peak_resident_bytes() > 64 * 2**20 and block.sum() > 0
