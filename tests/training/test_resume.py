"""Exact resume after a crash, and identical results for the same seed and config (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fewshot.run.training import train
from tests.conftest import compose_config
from tests.training.crash import TrainingKilled

# 3 epochs of 3 training steps each; validation (and last.ckpt) after every epoch
RUN = ["debug=tiny", "trainer=cpu", "logger=none", "trainer.max_epochs=3", "data.train_episodes=3"]
METHODS = {
    "protonet": ["model=protonet"],
    "meta_lstm": ["model=meta_lstm", "model.inner_steps=2", "model.learner.hidden=8"],
    "siamese": ["model=siamese"],
}


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of a run's last checkpoint."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


@pytest.mark.parametrize("method", list(METHODS))
def test_run_killed_mid_training_resumes_to_identical_weights_and_accuracy(method, tmp_path):
    overrides = RUN + METHODS[method]
    whole = train(compose_config(overrides, tmp_path / "whole"))

    crash = ["+callbacks.crash._target_=tests.training.crash.CrashAfterStep", "+callbacks.crash.step=5"]
    with pytest.raises(TrainingKilled):
        train(compose_config(overrides + crash, tmp_path / "killed"))  # dies in the second epoch
    # the crash callback is the one deliberate difference from the killed run's config
    resumed = train(
        compose_config(overrides + ["resume=true", "resume_allow_changes=[callbacks.crash]"], tmp_path / "killed")
    )

    assert_same_weights(final_weights(tmp_path / "whole"), final_weights(tmp_path / "killed"))
    assert resumed["test"]["episode_acc"] == whole["test"]["episode_acc"]
    assert [h["acc"] for h in resumed["val_history"]] == [h["acc"] for h in whole["val_history"]]
    assert resumed["train"]["steps"] == whole["train"]["steps"] == 9
    # the speed probes of the killed part come back from last.ckpt; the resume probes again at step 3
    steps = [m["step"] for m in resumed["hardware"]["speed_probe"]["history"]]
    assert steps == [0, 3, 3, 6, 9], steps


def test_resume_without_a_finished_epoch_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="resume=true but .*last.ckpt does not exist.*ckpt_path="):
        train(compose_config(RUN + ["resume=true"], tmp_path))


@pytest.mark.parametrize("method", ["protonet", "meta_lstm"])
def test_same_seed_and_config_give_identical_results(method, tmp_path):
    first = train(compose_config(RUN + METHODS[method], tmp_path / "a"))
    second = train(compose_config(RUN + METHODS[method], tmp_path / "b"))
    assert first["test"]["episode_acc"] == second["test"]["episode_acc"]
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    other_seed = train(compose_config(RUN + METHODS[method] + ["seed=1"], tmp_path / "c"))
    assert other_seed["test"]["episode_acc"] != first["test"]["episode_acc"]


def test_trainer_deterministic_is_honoured(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    try:
        train(compose_config(RUN + ["trainer.deterministic=true"], tmp_path))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("method", ["meta_lstm", "maml"])
def test_ddp_with_two_cpu_processes_scores_the_test_episodes_like_one_process(method, tmp_path):
    from tests.training.test_train import run_train

    settings = {"meta_lstm": METHODS["meta_lstm"], "maml": ["model=maml", "model.learner.hidden=8"]}[method]
    overrides = ["debug=tiny", "logger=none", "data.test_episodes=7", "data.train_episodes=5", *settings]
    out = run_train(
        *overrides,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={tmp_path / 'ddp'}",
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    # 7 test episodes over 2 ranks (4 + 3): each scored once, none padded
    assert ddp["test"]["episode_index"] == list(range(7))
    assert ddp["train"]["steps"] == 2  # 5 training episodes: 2 per rank, the odd one left out
    single = train(
        compose_config(
            [*overrides, "trainer=cpu", "train=false", f"ckpt_path={ddp['checkpoint']}"], tmp_path / "single"
        )
    )
    assert single["test"]["episode_acc"] == pytest.approx(ddp["test"]["episode_acc"], abs=1e-6)
    assert single["test"]["acc"] == pytest.approx(ddp["test"]["acc"], abs=1e-7)


def test_a_resumed_run_records_the_commit_of_each_stretch_of_training(tmp_path, monkeypatch):
    overrides = RUN + METHODS["protonet"]
    crash = ["+callbacks.crash._target_=tests.training.crash.CrashAfterStep", "+callbacks.crash.step=5"]
    monkeypatch.setattr("fewshot.run.training.git_commit", lambda *args, **kwargs: "aaa")
    with pytest.raises(TrainingKilled):
        train(compose_config(overrides + crash, tmp_path))  # last.ckpt after the first epoch, step 3
    monkeypatch.setattr("fewshot.run.training.git_commit", lambda *args, **kwargs: "bbb-dirty")
    resumed = train(compose_config(overrides + ["resume=true", "resume_allow_changes=[callbacks.crash]"], tmp_path))
    assert resumed["git_commit"] == "bbb-dirty"
    assert resumed["git_commits"] == [{"commit": "aaa", "from_step": 0}, {"commit": "bbb-dirty", "from_step": 3}]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["git_commits"] == resumed["git_commits"]


def test_a_moved_run_folder_resumes_and_tests_its_best_checkpoint_in_the_new_place(tmp_path):
    overrides = RUN + METHODS["protonet"]
    train(compose_config([*overrides, "trainer.max_epochs=2"], tmp_path / "old"))
    shutil.move(tmp_path / "old", tmp_path / "new")
    # nothing left to train: the test takes the best checkpoint the callbacks' restored state names
    finished = train(compose_config([*overrides, "trainer.max_epochs=2", "resume=true"], tmp_path / "new"))
    assert Path(finished["checkpoint"]).parent == (tmp_path / "new" / "checkpoints").resolve()
    # one more epoch: the best of all three validations is tested, not the first after the move
    longer = train(compose_config([*overrides, "trainer.max_epochs=3", "resume=true"], tmp_path / "new"))
    best = max(h["acc"] for h in longer["val_history"])
    assert Path(longer["checkpoint"]).name.endswith(f"valacc{best:.4f}.ckpt"), (longer["checkpoint"], best)


def test_a_moved_run_folder_without_its_best_checkpoint_says_so_instead_of_testing_other_weights(tmp_path):
    overrides = [*RUN, *METHODS["protonet"], "trainer.max_epochs=1"]
    train(compose_config(overrides, tmp_path / "old"))
    shutil.move(tmp_path / "old", tmp_path / "new")
    for best in (tmp_path / "new" / "checkpoints").glob("epoch*.ckpt"):
        best.unlink()
    with pytest.raises(FileNotFoundError, match=r"best-on-validation checkpoint .*epoch000.* is missing"):
        train(compose_config([*overrides, "resume=true"], tmp_path / "new"))


def test_training_on_from_another_runs_checkpoint_into_a_new_folder_tests_the_best_of_both(tmp_path):
    overrides = RUN + METHODS["protonet"]
    first = train(compose_config([*overrides, "trainer.max_epochs=1"], tmp_path / "first"))
    ckpt = f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}"
    second = train(compose_config([*overrides, "trainer.max_epochs=2", ckpt], tmp_path / "second"))
    assert [h["step"] for h in second["val_history"]] == [3, 6]
    best = max(h["acc"] for h in second["val_history"])
    assert Path(second["checkpoint"]).is_file() and Path(second["checkpoint"]).name.endswith(f"valacc{best:.4f}.ckpt")
    assert (tmp_path / "first" / "checkpoints" / Path(first["checkpoint"]).name).is_file(), "the first run's files stay"


STOPPERS = {
    # min_delta 1 (a rise of 100 points): the second validation cannot improve, so patience 1 ends the run
    "plateau": ["callbacks=plateau", "callbacks.early_stopping.patience=1", "callbacks.early_stopping.min_delta=1.0"],
    "cpu_budget": ["callbacks.cpu_budget.minutes=0.0001"],  # spent after the first step; Lightning validates once more
}


@pytest.mark.parametrize("reason", list(STOPPERS))
def test_a_run_that_stopped_stays_stopped_and_keeps_its_figures_when_resumed(reason, tmp_path):
    stopper = STOPPERS[reason]
    overrides = [*RUN, *METHODS["protonet"], "trainer.max_epochs=10", *stopper]
    first = train(compose_config(overrides, tmp_path))
    again = train(compose_config([*overrides, "resume=true"], tmp_path))
    assert first["train"]["stopped_by"] == again["train"]["stopped_by"] == reason
    assert again["train"]["steps"] == first["train"]["steps"] < 30
    assert again["val_history"] == first["val_history"] and again["val_last"] == first["val_last"]
    assert again["checkpoint"] == first["checkpoint"] and again["test"]["acc"] == first["test"]["acc"]
    # the CPU time saved with the last validation (the first run's figure adds what followed it)
    assert again["train"]["cpu_s"] == pytest.approx(first["train"]["cpu_s"], abs=1.0)


def test_a_resume_may_raise_the_patience_of_a_run_the_plateau_stopped(tmp_path):
    overrides = [*RUN, *METHODS["protonet"], "trainer.max_epochs=6", "callbacks=plateau"]
    overrides += ["callbacks.early_stopping.min_delta=1.0"]  # no validation after the first improves
    first = train(compose_config([*overrides, "callbacks.early_stopping.patience=1"], tmp_path))
    assert first["train"]["stopped_by"] == "plateau" and len(first["val_history"]) == 2
    allow = "resume_allow_changes=[callbacks.early_stopping.patience]"
    again = train(compose_config([*overrides, "callbacks.early_stopping.patience=3", allow, "resume=true"], tmp_path))
    # patience 3 from the first validation: two more (Lightning's own callback kept the checkpoint's 1)
    assert again["train"]["stopped_by"] == "plateau" and len(again["val_history"]) == 4


def test_a_run_checkpointed_by_lightnings_own_callbacks_resumes_with_ours(tmp_path):
    # runs started before our RunFolderCheckpoint / PlateauStopping existed name Lightning's classes
    overrides = [*RUN, *METHODS["protonet"], "callbacks=plateau"]
    older = [
        "callbacks.model_checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint",
        "callbacks.last_checkpoint._target_=pytorch_lightning.callbacks.ModelCheckpoint",
        "callbacks.early_stopping._target_=pytorch_lightning.callbacks.EarlyStopping",
    ]
    first = train(compose_config([*overrides, *older, "trainer.max_epochs=1"], tmp_path))
    resumed = train(compose_config([*overrides, "trainer.max_epochs=2", "resume=true"], tmp_path))
    assert [h["step"] for h in resumed["val_history"]] == [3, 6]
    assert resumed["val_history"][0] == first["val_history"][0]
