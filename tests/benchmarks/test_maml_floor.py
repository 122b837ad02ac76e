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
