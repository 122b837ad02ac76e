"""Run options: scoring several shots on the same episodes, CPU budgets, best-validation results."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fewshot.run.callbacks.budget import CpuTimeBudget
from fewshot.run.training import train


def test_eval_shots_scores_each_k_on_the_same_test_episodes(tiny_config):
    results = train(tiny_config("data.n_shot=3", "eval.shots=[1,3]"))
    test = results["test"]
    assert sorted(test["shots"]) == ["1", "3"]
    assert test["shots"]["3"]["acc"] == test["acc"]  # K = data.n_shot is the main score
    one = test["shots"]["1"]
    assert one["episodes"] == test["episodes"] and one["episode_index"] == test["episode_index"]
    assert one["episode_acc"] != test["episode_acc"]  # fewer shots score differently


def test_eval_shots_larger_than_the_episodes_shots_is_refused(tiny_config):
    with pytest.raises(ValueError, match=r"eval.shots=\[1, 5\].*data.n_shot=2.*set data.n_shot=5"):
        train(tiny_config("data.n_shot=2", "eval.shots=[1,5]"))


def test_results_val_is_the_best_validation_and_history_is_kept(tiny_config):
    results = train(tiny_config("trainer.max_epochs=3", "data.train_episodes=2"))
    history = results["val_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert results["val"]["acc"] == max(h["acc"] for h in history)
    assert results["val_last"]["acc"] == history[-1]["acc"]


def test_test_checkpoint_best_tests_the_best_validation_checkpoint(tiny_config):
    results = train(tiny_config("trainer.max_epochs=3", "data.train_episodes=2"))
    assert results["test_checkpoint"] == "best"
    best_epoch = max(results["val_history"], key=lambda h: h["acc"])["epoch"]
    assert Path(results["checkpoint"]).name.startswith(f"epoch{best_epoch:03d}-")


def test_test_checkpoint_last_tests_the_final_weights(tiny_config):
    results = train(tiny_config("trainer.max_epochs=3", "data.train_episodes=2", "test_checkpoint=last"))
    assert results["test_checkpoint"] == "last"
    path = Path(results["checkpoint"])
    assert path.name == "final.ckpt" and path.parent.name == "checkpoints"
    final = torch.load(path, map_location="cpu", weights_only=True)
    assert final["global_step"] == results["train"]["steps"] == 6
    # `val` is the tested weights' validation: the last one, not the best
    history = results["val_history"]
    assert history[-1]["acc"] < max(h["acc"] for h in history)  # else the next line tells nothing
    assert results["val"]["acc"] == results["val_last"]["acc"] == history[-1]["acc"]


def test_test_checkpoint_last_with_weights_trained_past_their_last_validation_has_no_val(tiny_config):
    results = train(tiny_config("trainer.max_epochs=3", "data.train_episodes=2", "trainer.max_steps=5",
                                "test_checkpoint=last"))  # fmt: skip
    assert results["train"]["steps"] == 5 and results["val_history"][-1]["step"] < 5
    assert results["val"] is None and results["val_last"] is not None


def test_without_a_best_checkpoint_the_results_name_the_final_weights_and_their_validation(tiny_config):
    # callbacks=none saves no best-on-validation checkpoint: the final weights are tested, and
    # results.json must say so, with their own validation, not the best one of other weights
    results = train(tiny_config("trainer.max_epochs=3", "data.train_episodes=2", "callbacks=none"))
    assert results["test_checkpoint"] == "last" and results["checkpoint"] is None
    history = results["val_history"]
    assert history[-1]["acc"] < max(h["acc"] for h in history)  # else the next line tells nothing
    assert results["val"]["acc"] == results["val_last"]["acc"] == history[-1]["acc"]


def test_without_validation_the_results_name_the_final_weights_and_no_validation(tiny_config):
    results = train(tiny_config("trainer.max_epochs=2", "data.train_episodes=2", "+trainer.limit_val_batches=0"))
    assert results["test_checkpoint"] == "last" and results["checkpoint"] is None
    assert results["val"] is None and results["val_history"] == []


def test_unknown_test_checkpoint_is_refused_before_training(tiny_config, tmp_path):
    with pytest.raises(ValueError, match=r"test_checkpoint must be one of \['best', 'last'\], got 'final'"):
        train(tiny_config("test_checkpoint=final"))
    assert not (tmp_path / "checkpoints").exists()


def test_variant_names_its_own_row_in_the_results(tiny_config):
    results = train(tiny_config("variant=meta-batch 4"))
    assert results["method"] == "ProtoNet (meta-batch 4)"
    assert train(tiny_config())["method"] == "ProtoNet"


@pytest.mark.parametrize("variant", ["''", "'a (b)'", "3"])
def test_bad_variant_is_refused_before_training(tiny_config, tmp_path, variant):
    with pytest.raises(ValueError, match=r"variant must be (a short name without parentheses|null or a string)"):
        train(tiny_config(f"variant={variant}"))
    assert not (tmp_path / "checkpoints").exists()


def test_cpu_budget_stops_training_and_reports_cpu_time(tiny_config):
    results = train(
        tiny_config(
            "callbacks=default",
            "callbacks.cpu_budget.minutes=0.001",
            "trainer.max_epochs=-1",
            "trainer.enable_progress_bar=false",
            "data.train_episodes=20",
        )
    )
    train_info = results["train"]
    assert train_info["cpu_s"] >= 0.06
    assert 1 <= train_info["steps"] < 60  # a few steps, not an endless run
    assert results["val_history"], "a validation runs when the budget stops training"


def test_plateau_stops_when_validation_stops_improving(tiny_config):
    # min_delta=1.0: no validation after the first can improve on it, so patience 2 ends training
    # after the third validation
    results = train(
        tiny_config(
            "callbacks=plateau",
            "callbacks.early_stopping.patience=2",
            "callbacks.early_stopping.min_delta=1.0",
            "trainer.max_epochs=-1",
            "trainer.enable_progress_bar=false",
            "data.train_episodes=2",
        )
    )
    assert results["train"]["stopped_by"] == "plateau" and results["train"]["plateaued"] is True
    assert [h["epoch"] for h in results["val_history"]] == [0, 1, 2]
    cpu = [h["cpu_s"] for h in results["val_history"]]  # the time-to-accuracy figure's x axis
    assert 0 < cpu[0] < cpu[1] < cpu[2] <= results["train"]["cpu_s"]


def test_plateau_run_capped_by_cpu_budget_says_it_did_not_plateau(tiny_config):
    results = train(
        tiny_config(
            "callbacks=plateau",
            "callbacks.cpu_budget.minutes=0.001",
            "trainer.max_epochs=-1",
            "trainer.enable_progress_bar=false",
            "data.train_episodes=20",
        )
    )
    assert results["train"]["stopped_by"] == "cpu_budget" and results["train"]["plateaued"] is False


def test_run_ended_by_max_epochs_says_so(tiny_config):
    results = train(tiny_config("trainer.max_epochs=2", "data.train_episodes=2"))
    assert results["train"]["stopped_by"] == "max_epochs" and results["train"]["plateaued"] is False


def test_cpu_budget_rejects_non_positive_minutes():
    with pytest.raises(ValueError, match="must be positive"):
        CpuTimeBudget(minutes=0)


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [("meta_lstm", "grad_clip_norm", 0.25), ("matchingnet_fce", "grad_clip_norm", 0.25)],
)
def test_a_trainer_clip_on_a_method_that_clips_itself_is_refused_before_training(tiny_config, tmp_path, model, key,
                                                                                  value):  # fmt: skip
    message = (
        rf"trainer.gradient_clip_val=1.0 and model.{key}={value} both clip .*'s gradients, which clips its own; "
        rf"set the clip with model.{key}=1.0 and leave trainer.gradient_clip_val=null"
    )
    with pytest.raises(ValueError, match=message):
        train(tiny_config(f"model={model}", "trainer.gradient_clip_val=1.0"))
    assert not (tmp_path / "checkpoints").exists()


def test_a_trainer_clip_is_taken_when_the_method_does_not_clip_itself(tiny_config):
    results = train(tiny_config("model=meta_lstm", "model.inner_steps=2", "model.learner.hidden=8",
                                "model.grad_clip_norm=null", "trainer.gradient_clip_val=1.0"))  # fmt: skip
    assert results["train"]["steps"] == 4


def test_monitor_val_loss_tests_the_checkpoint_of_the_lowest_validation_loss(tiny_config):
    results = train(tiny_config("trainer.max_epochs=5", "data.train_episodes=1", "monitor=val/loss"))
    history = results["val_history"]
    lowest = min(history, key=lambda h: h["loss"])
    assert lowest["epoch"] != max(history, key=lambda h: h["acc"])["epoch"]  # else the choice tells nothing
    assert Path(results["checkpoint"]).name.startswith(f"epoch{lowest['epoch']:03d}-")
    assert results["val"]["loss"] == lowest["loss"] and results["val"]["step"] == lowest["step"]
    assert 1.0 < lowest["loss"] < 1.7  # the query cross-entropy of 5-way episodes near chance, ln 5 = 1.61


def test_an_unknown_monitor_is_refused_before_training(tiny_config, tmp_path):
    message = r"monitor must be one of \['val/acc', 'val/loss'\], got 'val/ci95'.*set monitor=val/acc or"
    with pytest.raises(ValueError, match=message):
        train(tiny_config("monitor=val/ci95"))
    assert not (tmp_path / "checkpoints").exists()


def test_train_on_val_needs_the_final_weights_tested(tiny_config, tmp_path):
    message = r"data.train_on_val=true trains on the validation classes.*set test_checkpoint=last"
    with pytest.raises(ValueError, match=message):
        train(tiny_config("data.train_on_val=true"))
    assert not (tmp_path / "checkpoints").exists()
    results = train(tiny_config("data.train_on_val=true", "test_checkpoint=last"))
    plain = train(tiny_config())
    classes, plain_classes = results["classes"], plain["classes"]
    assert classes["train"] == plain_classes["train"] + plain_classes["val"] and classes["val"] == plain_classes["val"]
    assert Path(results["checkpoint"]).name == "final.ckpt"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["callbacks.cpu_budget.minutes=nan"], r"callbacks.cpu_budget.minutes must be positive and finite .* got nan"),
        (["callbacks.cpu_budget.minutes=inf"], r"callbacks.cpu_budget.minutes must be positive and finite .* got inf"),
        (["callbacks=plateau", "callbacks.early_stopping.patience=0"], "patience must be at least 1 validation, got 0"),
        (["callbacks=plateau", "callbacks.early_stopping.min_delta=-0.1"], "min_delta must be a non-negative number"),
        (["callbacks=plateau", "callbacks.early_stopping.patience=2.5"], "patience must be an integer, got 2.5"),
        (["callbacks.speed_probe.repeats=0"], "speed_probe needs repeats >= 1"),
    ],
)
def test_a_bad_callback_option_is_refused_before_the_data_are_read(
    tiny_config, tmp_path, monkeypatch, overrides, message
):
    def no_data(*args, **kwargs):
        raise AssertionError("the data were read before the callback options were checked")

    monkeypatch.setattr("fewshot.data.datamodule.EpisodicDataModule.setup", no_data)
    with pytest.raises(Exception, match=message):
        train(tiny_config(*overrides))
    assert not (tmp_path / "checkpoints").exists()


def test_endless_epochs_with_nothing_to_stop_them_are_refused(tiny_config):
    with pytest.raises(ValueError, match=r"trainer.max_epochs=-1 with no trainer.max_steps.*would train forever"):
        train(tiny_config("trainer.max_epochs=-1"))


@pytest.mark.parametrize(
    "stop",
    [
        ["trainer.max_steps=2"],
        ["callbacks.cpu_budget.minutes=0.001"],
        ["callbacks=plateau", "callbacks.early_stopping.patience=1"],
    ],
)
def test_endless_epochs_with_something_to_stop_them_train(tiny_config, stop):
    results = train(tiny_config("trainer.max_epochs=-1", "data.train_episodes=2", *stop))
    assert results["train"]["stopped_by"] in ("max_steps", "cpu_budget", "plateau")
