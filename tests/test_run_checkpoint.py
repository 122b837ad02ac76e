"""A run folder that moved between saving and resuming keeps its checkpoint callbacks' best-so-far state."""

from __future__ import annotations

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from fewshot.run_checkpoint import RunFolderCheckpoint, moved_state, rebased

OLD, NEW = "/old/run/checkpoints", "/new/place/checkpoints"


def saved_state() -> dict:
    """A ModelCheckpoint state as Lightning saves it in ``OLD`` (best after epoch 2 of 4)."""
    return {
        "monitor": "val/acc",
        "best_model_score": torch.tensor(0.9),
        "best_model_path": f"{OLD}/epoch002-valacc0.9000.ckpt",
        "current_score": torch.tensor(0.8),
        "dirpath": OLD,
        "best_k_models": {f"{OLD}/epoch002-valacc0.9000.ckpt": torch.tensor(0.9)},
        "kth_best_model_path": f"{OLD}/epoch002-valacc0.9000.ckpt",
        "kth_value": torch.tensor(0.9),
        "last_model_path": "",
    }


def test_rebased_moves_only_files_directly_in_the_former_folder():
    assert rebased(f"{OLD}/a.ckpt", OLD, NEW) == f"{NEW}/a.ckpt"
    assert rebased("/elsewhere/a.ckpt", OLD, NEW) == "/elsewhere/a.ckpt"
    assert rebased(f"{OLD}/deeper/a.ckpt", OLD, NEW) == f"{OLD}/deeper/a.ckpt"
    assert rebased("", OLD, NEW) == ""


def test_moved_state_rebases_every_path_and_keeps_the_scores():
    moved = moved_state(saved_state(), NEW)
    assert moved["dirpath"] == NEW
    assert moved["best_model_path"] == moved["kth_best_model_path"] == f"{NEW}/epoch002-valacc0.9000.ckpt"
    assert list(moved["best_k_models"]) == [f"{NEW}/epoch002-valacc0.9000.ckpt"]
    assert moved["best_model_score"] == torch.tensor(0.9) and moved["last_model_path"] == ""


def test_a_moved_folder_keeps_the_best_score_where_lightning_forgets_it():
    ours = RunFolderCheckpoint(dirpath=NEW, monitor="val/acc", mode="max")
    ours.load_state_dict(saved_state())
    assert ours.best_model_score == torch.tensor(0.9)  # a lower validation after the resume is not "best"
    assert ours.best_model_path == f"{NEW}/epoch002-valacc0.9000.ckpt"
    assert ours.best_k_models == {f"{NEW}/epoch002-valacc0.9000.ckpt": torch.tensor(0.9)}
    lightnings = ModelCheckpoint(dirpath=NEW, monitor="val/acc", mode="max")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        lightnings.load_state_dict(saved_state())
    assert lightnings.best_model_score is None and lightnings.best_model_path.startswith(OLD)  # why the class exists


def test_an_unmoved_folder_loads_as_lightning_does():
    ours = RunFolderCheckpoint(dirpath=OLD, monitor="val/acc", mode="max")
    ours.load_state_dict(saved_state())
    assert ours.best_model_path == f"{OLD}/epoch002-valacc0.9000.ckpt" and ours.kth_value == torch.tensor(0.9)


def test_state_key_is_lightnings_so_older_checkpoints_load():
    for kwargs in ({"monitor": "val/acc", "mode": "max"}, {"monitor": None, "every_n_epochs": 1}):
        assert RunFolderCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key
