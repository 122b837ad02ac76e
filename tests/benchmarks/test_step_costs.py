"""benchmarks/step_costs.py: each queue line's reference cost per step and the step caps of one
reference budget (issue 36 item 1), and a capped queue line that reproduces its results exactly."""

from __future__ import annotations

import json

import pytest

from benchmarks import step_costs
from fewshot.run.training import train
from tests.conftest import compose_config

TINY = ["debug=tiny", "trainer=cpu", "model=protonet"]


def readings(step_cpu: list[float], validations: list[tuple[float, float]], loop: dict) -> dict:
    """Timer readings: CPU seconds after steps 1, 2, ... and (start, end) of each validation."""
    return {
        "steps": [[i + 1, t] for i, t in enumerate(step_cpu)],
        "validations": [{"start": a, "end": b} for a, b in validations],
        "loop": loop,
    }


EVERY_EPOCH_OF_4 = {"num_training_batches": 4, "val_check_batch": 4, "check_val_every_n_epoch": 1}


def test_a_lines_cost_takes_validations_out_of_the_steps_and_amortises_one_over_its_interval():
    # steps after warm-up 1: 2 s each; the validation after step 4 took 6 s (between steps 4 and 5)
    cost = step_costs.line_cost(readings([1, 3, 5, 7, 15, 17], [(7.5, 13.5)], EVERY_EPOCH_OF_4), warmup=1)
    assert cost == {
        "train_step_cpu_s": pytest.approx((17 - 3 - 6) / 4),
        "validation_cpu_s": 6.0,
        "steps_per_validation": 4,
        "step_cpu_s": pytest.approx(2.0 + 6.0 / 4),
    }


def test_steps_between_validations_follow_the_trainers_schedule():
    every_third_epoch = {**EVERY_EPOCH_OF_4, "check_val_every_n_epoch": 3}
    assert step_costs.steps_per_validation(every_third_epoch, 1.0) == 12
    within_epoch = {"num_training_batches": 500, "val_check_batch": 100, "check_val_every_n_epoch": 1}
    assert step_costs.steps_per_validation(within_epoch, 2.0) == 200  # two optimiser steps per batch


def test_too_few_steps_or_no_validation_is_refused():
    with pytest.raises(RuntimeError, match="only 2 training steps ran; at least 3"):
        step_costs.line_cost(readings([1, 2], [(2, 3)], EVERY_EPOCH_OF_4), warmup=1)
    with pytest.raises(RuntimeError, match="no validation ran"):
        step_costs.line_cost(readings([1, 2, 3], [], EVERY_EPOCH_OF_4), warmup=1)


QUEUE = """# a comment
@common callbacks=plateau trainer.max_epochs=-1
a_s0 experiment=x seed=0
a_s1 experiment=x seed=1 trainer.max_steps=40 callbacks.cpu_budget.minutes=240
b_s0 experiment=x seed=0 "variant='meta-batch 4'"
"""
COSTS = {
    "version": 1,
    "rows": [{"lines": ["a_s0", "a_s1"], "step_cpu_s": 0.5}, {"lines": ["b_s0"], "step_cpu_s": 7.0}],
}


def test_one_reference_budget_gives_each_line_its_step_cap_and_the_queue_is_capped_in_steps(tmp_path):
    queue = tmp_path / "queue.txt"
    queue.write_text(QUEUE)
    runs = step_costs.load_run_queue().read_queue(queue)
    assert step_costs.work_key(runs[0].overrides) == step_costs.work_key(runs[1].overrides)
    caps = step_costs.step_caps(runs, COSTS, reference_minutes=60)
    assert caps == {"a_s0": 7200, "a_s1": 7200, "b_s0": 514}  # 3600 / 0.5, floor(3600 / 7)
    assert step_costs.capped_queue(QUEUE, caps).splitlines() == [
        "# a comment",
        "@common callbacks=plateau trainer.max_epochs=-1",
        "a_s0 experiment=x seed=0 trainer.max_steps=7200 callbacks.cpu_budget.minutes=null",
        "a_s1 experiment=x seed=1 trainer.max_steps=7200 callbacks.cpu_budget.minutes=null",
        "b_s0 experiment=x seed=0 \"variant='meta-batch 4'\" trainer.max_steps=514 callbacks.cpu_budget.minutes=null",
    ]
    costs = tmp_path / "costs.json"
    costs.write_text(json.dumps(COSTS))
    capped = tmp_path / "capped.txt"
    argv = [str(queue), "--costs", str(costs), "--reference-minutes", "60", "--write-queue", str(capped)]
    assert step_costs.main(argv) == 0
    assert capped.read_text() == step_costs.capped_queue(QUEUE, caps)
    assert [r.overrides for r in step_costs.load_run_queue().read_queue(capped)][2][-3] == "variant='meta-batch 4'"


@pytest.mark.parametrize(
    ("costs", "problem"),
    [
        ({"version": 1, "rows": [{"lines": ["a_s0", "a_s1"], "step_cpu_s": 0.5}]}, "has no cost for b_s0"),
        ({"version": 1, "rows": [{"lines": ["a_s0"], "step_cpu_s": 0}]}, "step_cpu_s 0, not a positive number"),
        ({"rows": []}, "is not a costs file of version 1"),
    ],
)
def test_a_costs_file_without_a_line_or_with_a_bad_cost_is_refused(tmp_path, capsys, costs, problem):
    (tmp_path / "queue.txt").write_text(QUEUE)
    (tmp_path / "costs.json").write_text(json.dumps(costs))
    argv = [str(tmp_path / "queue.txt"), "--costs", str(tmp_path / "costs.json"), "--reference-minutes", "60"]
    assert step_costs.main(argv) == 2
    assert problem in capsys.readouterr().err


def test_measuring_a_tiny_queue_writes_one_row_per_distinct_line(tmp_path):
    queue = tmp_path / "queue.txt"
    queue.write_text(f"@common {' '.join(TINY)} logger=csv\nt_s0 seed=0\nt_s1 seed=1 trainer.max_steps=99\n")
    out = tmp_path / "costs.json"
    assert step_costs.main([str(queue), "--out", str(out), "--warmup", "1", "--steps", "2"]) == 0
    costs = json.loads(out.read_text())
    assert costs["machine"]["cpu"] and costs["machine"]["torch_threads"] >= 1
    (row,) = costs["rows"]
    assert row["lines"] == ["t_s0", "t_s1"]
    assert (row["method"], row["setting"]) == ("ProtoNet", "embedded_tiny 5-way 1-shot")
    assert row["steps_per_validation"] == 4  # debug=tiny: 4 episodes per epoch, validated every epoch
    assert 0 < row["train_step_cpu_s"] < row["step_cpu_s"]
    assert row["step_cpu_s"] == pytest.approx(row["train_step_cpu_s"] + row["validation_cpu_s"] / 4)


def test_a_capped_queue_line_run_twice_reproduces_its_test_accuracies_exactly(tmp_path):
    """A queue line capped in steps (plateau rule, no CPU cap) trains the same steps and scores the
    same test episodes the same way whatever the machine's speed."""
    line = [*TINY, "logger=none", "callbacks=plateau", "trainer.max_epochs=-1", "seed=3"]
    line += ["trainer.max_steps=5", "callbacks.cpu_budget.minutes=null"]
    first = train(compose_config(line, tmp_path / "first"))
    second = train(compose_config(line, tmp_path / "second"))
    assert first["train"]["stopped_by"] == second["train"]["stopped_by"] == "max_steps"
    assert first["train"]["steps"] == second["train"]["steps"] == 5
    assert first["test"]["acc"] == second["test"]["acc"]
    assert first["test"]["episode_acc"] == second["test"]["episode_acc"]
    assert first["test"]["fingerprint"] == second["test"]["fingerprint"]


def test_lines_that_differ_only_in_a_same_work_key_share_one_measurement_and_one_cap(monkeypatch):
    base = ("experiment=x", "seed=0")
    variant = ("experiment=x", "seed=0", "model.grad_scale=mean", "variant='gradient as mean'")
    other_work = ("experiment=x", "seed=0", "data.meta_batch_size=4", "variant='meta-batch 4'")
    same_work = ("model.grad_scale", "variant")
    assert step_costs.work_key(variant) != step_costs.work_key(base)
    assert step_costs.work_key(variant, same_work) == step_costs.work_key(base, same_work)
    assert step_costs.work_key(other_work, same_work) != step_costs.work_key(base, same_work)

    Run = step_costs.load_run_queue().QueuedRun
    measured = []

    def fake_measure(overrides, warmup, steps, extra=()):
        measured.append(tuple(overrides))
        return {
            "method": "M",
            "setting": "s",
            "step_cpu_s": 1.0,
            "train_step_cpu_s": 1.0,
            "validation_cpu_s": 0.0,
            "steps_per_validation": None,
        }

    monkeypatch.setattr(step_costs, "measure_line", fake_measure)
    costs = step_costs.measure_queue(
        [Run("b", base), Run("v", variant), Run("o", other_work)], 1, 2, log=lambda _: None, same_work=same_work
    )
    assert measured == [base, other_work]
    assert [row["lines"] for row in costs["rows"]] == [["b", "v"], ["o"]]
    assert costs["same_work_keys"] == ["model.grad_scale", "variant"]
