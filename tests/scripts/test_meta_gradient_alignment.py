"""scripts/meta_gradient_alignment.py: first- against second-order MAML meta-gradients."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from fewshot.methods.maml import MAML
from fewshot.models.conv4 import Conv4
from tests.conftest import PROJECT_ROOT
from tests.methods.test_maml import random_episode, tiny_episode, tiny_learner

spec = importlib.util.spec_from_file_location(
    "meta_gradient_alignment", PROJECT_ROOT / "scripts" / "meta_gradient_alignment.py"
)
alignment_script = importlib.util.module_from_spec(spec)
sys.modules["meta_gradient_alignment"] = alignment_script
spec.loader.exec_module(alignment_script)


def test_with_a_zero_inner_step_first_and_second_order_are_the_same_gradient():
    method = MAML(tiny_learner(), torch.optim.SGD, inner_steps=1, inner_lr=0.0)
    rows = alignment_script.alignment(method, [tiny_episode(), tiny_episode(batch=3)])
    for row in rows.values():
        assert row["cos_fo_so"] == pytest.approx(1.0, abs=1e-9)
        assert row["norm_fo_over_so"] == pytest.approx(1.0, abs=1e-9)
        assert row["cos_fo_consecutive"] == pytest.approx(row["cos_so_consecutive"], abs=1e-9)


def test_an_inner_step_separates_them_and_the_method_keeps_its_order():
    method = MAML(tiny_learner(), torch.optim.SGD, inner_steps=1, inner_lr=0.5, first_order=False)
    rows = alignment_script.alignment(method, [tiny_episode(), tiny_episode(batch=3)])
    assert rows["all"]["cos_fo_so"] < 0.999
    assert rows["all"]["norm_fo_over_so"] != pytest.approx(1.0, abs=1e-3)
    assert method.first_order is False


def test_groups_split_the_learner_into_its_head_and_the_rest():
    conv = MAML(Conv4(in_channels=1, hidden=4, n_classes=5), torch.optim.SGD)
    assert alignment_script.head_names(conv) == {"learner.head.weight", "learner.head.bias"}
    mlp = MAML(tiny_learner(), torch.optim.SGD)
    assert alignment_script.head_names(mlp) == {"learner.4.weight", "learner.4.bias"}
    rows = alignment_script.alignment(conv, [random_episode(), random_episode(seed=1)])
    assert set(rows) == {"body", "head", "all"}


def test_one_batch_is_refused_with_the_reason():
    method = MAML(tiny_learner(), torch.optim.SGD)
    with pytest.raises(ValueError, match="at least 2 meta-batches"):
        alignment_script.alignment(method, [tiny_episode()])
    with pytest.raises(SystemExit):
        alignment_script.main(["some.ckpt", "--batches", "1"])
