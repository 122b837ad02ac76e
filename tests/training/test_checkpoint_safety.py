"""Checkpoints never run code when loaded, and are written atomically (issue 17, items 1 and 11)."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from PIL import Image

import fewshot
import fewshot.io as io_module
from fewshot.io import TEMP_SUFFIX, OutputPathError
from fewshot.predict import main as predict_main
from fewshot.run import checkpoint as checkpoints
from fewshot.run.checkpoint import AtomicCheckpointIO, CheckpointError, UnsafeCheckpointError
from fewshot.run.training import train
from tests.conftest import compose_config

RUN = ["debug=tiny", "trainer=cpu", "logger=none", "model=protonet", "trainer.max_epochs=2"]
REFUSED = "contains Python objects other than tensors and plain data"


class Payload:
    """Unpickling this creates ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny run folder (last.ckpt and a best checkpoint in checkpoints/)."""
    run_dir = tmp_path_factory.mktemp("run")
    train(compose_config(RUN, run_dir))
    return run_dir


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the trained run that a test may damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


def crafted_checkpoint(trained: Path, path: Path, marker: Path) -> Path:
    """A real checkpoint of the run with a payload object added."""
    checkpoint = torch.load(trained / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    checkpoint["payload"] = Payload(marker)
    torch.save(checkpoint, path)
    return path


def test_checkpoints_of_a_training_run_load_with_weights_only_true(trained):
    files = sorted((trained / "checkpoints").iterdir())
    assert {p.name for p in files} >= {"last.ckpt"} and len(files) == 2, files  # last + best, no temporaries
    for path in files:
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert "state_dict" in state and "fewshot_config" in state
    method = fewshot.load(str(files[0]))
    assert not method.training


@pytest.mark.parametrize("trainer", ["cpu", "default", "ddp"])
def test_every_trainer_config_uses_the_atomic_checkpoint_io(trainer, tmp_path):
    extra = ["trainer.accelerator=cpu"] if trainer == "ddp" else []
    cfg = compose_config(["debug=tiny", "logger=none", f"trainer={trainer}", *extra], tmp_path)
    built = instantiate(cfg.trainer)
    assert isinstance(built.strategy.checkpoint_io, AtomicCheckpointIO)


def test_resume_loads_through_lightnings_checkpoint_io_with_weights_only_true(run_copy, monkeypatch):
    seen = []
    original = AtomicCheckpointIO.load_checkpoint

    def spy(self, path, *args, **kwargs):
        seen.append(Path(path).name)
        return original(self, path, *args, **kwargs)  # always torch.load(weights_only=True)

    monkeypatch.setattr(AtomicCheckpointIO, "load_checkpoint", spy)
    results = train(compose_config([*RUN, "resume=true"], run_copy))  # the same config: nothing left to train
    assert results["train"]["epochs"] == 2
    assert seen[0] == "last.ckpt"  # Lightning's own resume loaded our checkpoint through it


def test_predict_refuses_a_crafted_checkpoint_without_running_it(trained, tmp_path, capsys):
    marker = tmp_path / "pwned"
    crafted = crafted_checkpoint(trained, tmp_path / "crafted.ckpt", marker)
    for name in ("a", "b"):  # a valid support set: the checkpoint is what must be refused
        (tmp_path / "support" / name).mkdir(parents=True)
        Image.new("L", (28, 28), 255 if name == "a" else 0).save(tmp_path / "support" / name / "0.png")
    (tmp_path / "query").mkdir()
    Image.new("L", (28, 28), 255).save(tmp_path / "query" / "q.png")
    code = predict_main(
        [
            f"ckpt_path={crafted}",
            f"support={tmp_path / 'support'}",
            f"query={tmp_path / 'query'}",
            f"output={tmp_path / 'p.csv'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert REFUSED in err and "never executes them" in err and "Use a checkpoint written by" in err
    assert "(it names io.open)" in err  # names what it found
    assert not marker.exists()
    assert not (tmp_path / "p.csv").exists()


def test_fewshot_load_refuses_a_crafted_checkpoint(trained, tmp_path):
    marker = tmp_path / "pwned"
    crafted = crafted_checkpoint(trained, tmp_path / "crafted.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        fewshot.load(str(crafted))
    assert not marker.exists()


def test_a_test_only_run_refuses_a_crafted_checkpoint(trained, tmp_path):
    marker = tmp_path / "pwned"
    crafted = crafted_checkpoint(trained, tmp_path / "crafted.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        train(compose_config([*RUN, "train=false", f"ckpt_path={crafted}"], tmp_path / "test_only"))
    assert not marker.exists()


def test_resume_refuses_a_crafted_last_checkpoint_and_names_the_earlier_one(trained, run_copy, tmp_path):
    marker = tmp_path / "pwned"
    crafted_checkpoint(trained, run_copy / "checkpoints" / "last.ckpt", marker)
    best = next(p for p in (run_copy / "checkpoints").iterdir() if p.name != "last.ckpt")
    with pytest.raises(CheckpointError, match=f"resume=true but .*last.ckpt cannot be used.*{REFUSED}") as info:
        train(compose_config([*RUN, "resume=true"], run_copy))
    assert f"ckpt_path={best}" in str(info.value)
    assert not marker.exists()


def test_lightnings_loading_refuses_a_crafted_checkpoint_even_when_asked_for_weights_only_false(trained, tmp_path):
    marker = tmp_path / "pwned"
    crafted = crafted_checkpoint(trained, tmp_path / "crafted.ckpt", marker)
    with pytest.raises(UnsafeCheckpointError, match=REFUSED):
        AtomicCheckpointIO().load_checkpoint(crafted, weights_only=False)
    assert not marker.exists()


def test_an_unreadable_last_checkpoint_names_the_earlier_one_to_resume_from(run_copy):
    (run_copy / "checkpoints" / "last.ckpt").write_bytes(b"")  # what a cut write used to leave
    best = next(p for p in (run_copy / "checkpoints").iterdir() if p.name != "last.ckpt")
    with pytest.raises(CheckpointError, match="last.ckpt cannot be used. Cannot read checkpoint") as info:
        train(compose_config([*RUN, "resume=true"], run_copy))
    assert f"resume from it with ckpt_path={best} (and hydra.run.dir={run_copy})" in str(info.value)


@pytest.mark.parametrize("content", [b"garbage\n", b"\x80\x02garbage", b"PK\x03\x04 not a torch zip"])
def test_a_file_that_is_not_a_checkpoint_is_called_unreadable_never_unsafe(tmp_path, content):
    path = tmp_path / "last.ckpt"
    path.write_bytes(content)  # e.g. `echo garbage > last.ckpt`
    with pytest.raises(CheckpointError) as info:
        checkpoints.load_checkpoint_file(path)
    message = str(info.value)
    assert not isinstance(info.value, UnsafeCheckpointError)
    assert f"Cannot read checkpoint {path}" in message
    assert "not a readable checkpoint" in message or "not a checkpoint" in message
    assert "could run code" not in message and "weights_only" not in message and "\n" not in message


def test_the_refusal_of_a_crafted_checkpoint_never_suggests_loading_it_unsafely(trained, tmp_path):
    crafted = crafted_checkpoint(trained, tmp_path / "crafted.ckpt", tmp_path / "pwned")
    with pytest.raises(UnsafeCheckpointError, match=REFUSED) as info:
        checkpoints.load_checkpoint_file(crafted)
    assert "weights_only" not in str(info.value)


def test_no_loadable_checkpoint_left_says_to_start_again(run_copy):
    for path in (run_copy / "checkpoints").iterdir():
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="No other checkpoint in .* loads; start the run again"):
        train(compose_config([*RUN, "resume=true"], run_copy))


def test_a_failed_checkpoint_write_leaves_the_previous_checkpoint_intact(trained, tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    target.parent.mkdir()
    shutil.copy(trained / "checkpoints" / "last.ckpt", target)
    before = target.read_bytes()

    def full_disk(obj, f):
        f.write(b"half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(OutputPathError, match=f"Cannot write {target}: no space left on the device"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, target)
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]  # no temporary left behind


def test_a_checkpoint_write_replaces_the_file_through_a_temporary_in_its_folder(tmp_path, monkeypatch):
    target = tmp_path / "checkpoints" / "last.ckpt"
    renames = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src), Path(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(io_module.os, "replace", spy)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    ((src, dst),) = renames
    assert dst == target and src.parent == target.parent and src.name.endswith(TEMP_SUFFIX)
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(2))


def test_a_full_disk_while_a_run_saves_a_checkpoint_names_the_path_and_no_space_left(tmp_path, monkeypatch):
    def full_disk(obj, f):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    with pytest.raises(
        OutputPathError, match=r"Cannot write .*checkpoints/.*\.ckpt: no space left on the device"
    ) as info:
        train(compose_config(RUN, tmp_path / "run"))
    assert "\n" not in str(info.value)
