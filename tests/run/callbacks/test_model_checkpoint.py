"""A run folder that moved between saving and resuming keeps its checkpoint callbacks' best-so-far state."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from fewshot.run.callbacks.model_checkpoint import RunFolderCheckpoint, moved_state, rebased

BEST = "epoch002-valacc0.9000.ckpt"


def folders(tmp_path: Path, best_in: tuple[str, ...]) -> tuple[str, str]:
    """A former and a current checkpoint folder; ``best_in`` names those that hold the best file."""
    old, new = tmp_path / "old" / "checkpoints", tmp_path / "new" / "checkpoints"
    for name, folder in (("old", old), ("new", new)):
        folder.mkdir(parents=True)
        if name in best_in:
            (folder / BEST).write_bytes(b"")
    return str(old), str(new)


def saved_state(old: str) -> dict:
    """A ModelCheckpoint state as Lightning saves it in ``old`` (best after epoch 2 of 4)."""
    return {
        "monitor": "val/acc",
        "best_model_score": torch.tensor(0.9),
        "best_model_path": f"{old}/{BEST}",
        "current_score": torch.tensor(0.8),
        "dirpath": old,
        "best_k_models": {f"{old}/{BEST}": torch.tensor(0.9)},
        "kth_best_model_path": f"{old}/{BEST}",
        "kth_value": torch.tensor(0.9),
        "last_model_path": "",
    }


def test_rebased_names_the_file_in_the_new_folder_only_where_it_is_there(tmp_path):
    old, new = folders(tmp_path, best_in=("old", "new"))
    assert rebased(f"{old}/{BEST}", old, new) == f"{new}/{BEST}"
    assert rebased(f"{old}/missing.ckpt", old, new) == f"{old}/missing.ckpt"
    assert rebased("/elsewhere/a.ckpt", old, new) == "/elsewhere/a.ckpt"
    assert rebased("", old, new) == ""


@pytest.mark.parametrize("best_in", [("new",), ("old", "new")], ids=["moved", "copied"])
def test_moved_state_names_the_new_folders_files_and_keeps_the_scores(tmp_path, best_in):
    old, new = folders(tmp_path, best_in)
    moved = moved_state(saved_state(old), new)
    assert moved["dirpath"] == new
    assert moved["best_model_path"] == moved["kth_best_model_path"] == f"{new}/{BEST}"
    assert list(moved["best_k_models"]) == [f"{new}/{BEST}"]
    assert moved["best_model_score"] == torch.tensor(0.9) and moved["last_model_path"] == ""


def test_training_on_from_another_runs_checkpoint_keeps_that_runs_best_file(tmp_path):
    old, new = folders(tmp_path, best_in=("old",))  # ckpt_path=<other run>/checkpoints/last.ckpt
    moved = moved_state(saved_state(old), new)
    assert moved["best_model_path"] == f"{old}/{BEST}" and moved["best_model_score"] == torch.tensor(0.9)


def test_a_moved_folder_keeps_the_best_score_where_lightning_forgets_it(tmp_path):
    old, new = folders(tmp_path, best_in=("new",))
    ours = RunFolderCheckpoint(dirpath=new, monitor="val/acc", mode="max")
    ours.load_state_dict(saved_state(old))
    assert ours.best_model_score == torch.tensor(0.9)  # a lower validation after the resume is not "best"
    assert ours.best_model_path == f"{new}/{BEST}"
    assert ours.best_k_models == {f"{new}/{BEST}": torch.tensor(0.9)}
    lightnings = ModelCheckpoint(dirpath=new, monitor="val/acc", mode="max")
    with pytest.warns(UserWarning, match="dirpath has changed"):
        lightnings.load_state_dict(saved_state(old))
    assert lightnings.best_model_score is None and lightnings.best_model_path.startswith(old)  # why the class exists


def test_an_unmoved_folder_loads_as_lightning_does(tmp_path):
    old, _ = folders(tmp_path, best_in=("old",))
    ours = RunFolderCheckpoint(dirpath=old, monitor="val/acc", mode="max")
    ours.load_state_dict(saved_state(old))
    assert ours.best_model_path == f"{old}/{BEST}" and ours.kth_value == torch.tensor(0.9)


def test_state_key_is_lightnings_so_older_checkpoints_load():
    for kwargs in ({"monitor": "val/acc", "mode": "max"}, {"monitor": None, "every_n_epochs": 1}):
        assert RunFolderCheckpoint(**kwargs).state_key == ModelCheckpoint(**kwargs).state_key


def test_drop_in_successors_are_subclasses_of_the_lightning_classes_they_replace():
    from hydra.utils import get_class

    from fewshot.run.checks import DROP_IN_SUCCESSORS

    for lightnings, ours in DROP_IN_SUCCESSORS.items():
        assert issubclass(get_class(ours), get_class(lightnings)) and get_class(ours) is not get_class(lightnings)
