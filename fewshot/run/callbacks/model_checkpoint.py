"""Lightning's ModelCheckpoint for a run folder that may move between saving and resuming.

Lightning keeps a checkpoint callback's best-so-far state (best score, best and k-th best
paths) only when the checkpoint folder is the one it was saved from; in a moved run folder it
forgets the best score, so the first validation after the resume becomes the "best" however
low it is, and the old best path still names the former folder. ``RunFolderCheckpoint``
keeps the whole state and names each checkpoint file in the current folder where it is there
too (a moved or copied run folder); a file that is only in the former folder (training from
another run's checkpoint with ``ckpt_path``) keeps its path.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import ModelCheckpoint

log = logging.getLogger(__name__)

# the state entries that hold one checkpoint path
PATH_ENTRIES = ("best_model_path", "kth_best_model_path", "last_model_path")


def rebased(path: str, old_dir: str, new_dir: str) -> str:
    """``path``'s file in ``new_dir`` if ``path`` lies in ``old_dir`` and ``new_dir`` holds that file, else ``path``."""
    if not path or os.path.dirname(path) != old_dir:
        return path
    moved = os.path.join(new_dir, os.path.basename(path))
    return moved if os.path.isfile(moved) else path


def moved_state(state: Mapping[str, Any], new_dir: str) -> dict[str, Any]:
    """A ModelCheckpoint state saved in ``state["dirpath"]`` with its paths re-based onto ``new_dir``."""
    old_dir = str(state.get("dirpath") or "")
    moved = dict(state, dirpath=new_dir)
    for entry in PATH_ENTRIES:
        if isinstance(state.get(entry), str):
            moved[entry] = rebased(state[entry], old_dir, new_dir)
    if isinstance(state.get("best_k_models"), Mapping):
        moved["best_k_models"] = {rebased(p, old_dir, new_dir): v for p, v in state["best_k_models"].items()}
    return moved


class RunFolderCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that saves right after validation and keeps its best-so-far state
    when the run folder moved."""

    @property
    def state_key(self) -> str:
        """Lightning's key for a ModelCheckpoint, so checkpoints written with either class load into both."""
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Lightning's setup, without its warning that the checkpoint folder is not empty: a run folder
        that holds checkpoints is only ever trained in again by a resume (a fresh run there is refused)."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
            super().setup(trainer, pl_module, stage)

    def _should_save_on_train_epoch_end(self, trainer: Any) -> bool:
        """Save after validation whenever the run validates (``save_on_train_epoch_end`` unset).

        Lightning's own rule saves at the end of the training epoch when validation runs every
        epoch; a run resumed from such a checkpoint replays that epoch's end without the
        validation: it warned that ``val/acc`` was missing, wrote ``last.ckpt`` again and, with no
        epoch cap, went on inexactly (other training from the next epoch, CSV steps one ahead).
        """
        batches = trainer.num_val_batches  # validation episodes per validation, of every loader
        if self._save_on_train_epoch_end is None and (sum(batches) if isinstance(batches, list) else batches) > 0:
            return False
        return super()._should_save_on_train_epoch_end(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state; paths inside a former checkpoint folder are re-based onto this one."""
        saved_dir = state_dict.get("dirpath")
        if saved_dir and self.dirpath and saved_dir != self.dirpath:
            state_dict = moved_state(state_dict, str(self.dirpath))
            best = state_dict.get("best_model_path")
            if self.monitor and best and not Path(best).is_file():
                log.warning(
                    "The best-on-validation checkpoint so far, %s, is neither in %s nor where it was saved: "
                    "copy it there, or a later validation must beat it before the run can be tested.",
                    os.path.basename(best),
                    self.dirpath,
                )
        super().load_state_dict(state_dict)
