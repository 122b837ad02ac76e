"""The bad-input catalogue (issue 7): every bad input gives a clear error, nothing is silently wrong.

Each case goes through the path a user takes (``python train.py``, ``fewshot.run.training.train(cfg)``,
``python -m fewshot.reporting``, ``fewshot.load`` or a dataset loader) and checks the error's type
and that its message names both the problem and the fix.

Configuration
    1. unknown config group option (``model=nosuch``): Hydra lists the available options.
    2. unknown config key (``data.n_wya=5``): Hydra names the key and the ``+key`` form.
    3. zero or negative N / K / Q, N = 1, ``data.train_n_way=0`` (was silently N): DataError.
    E1. ``data=folder`` without ``data.source.root``: OmegaConf names the missing key.
    E2. ``data.meta_batch_size=0``, ``callbacks.cpu_budget.minutes=-1``, ``nonfinite_loss=explode``,
        ``model.inner_steps=0`` or ``model.eval_inner_steps=-1`` (MAML, Reptile).
    E3. declared ``data.channels`` unlike the images'; unknown Omniglot split mode or alphabet.
Data
    4. N larger than the classes of a split.
    5. K + Q larger than the images of a class.
    6. missing data root (Omniglot, a user's folder dataset).
    7. empty class folder.
    8. corrupt image (garbage bytes named .png).
    9. non-image file among images: ``notes.txt`` is an error, OS junk (``.DS_Store``) is skipped.
    10. wrong image mode: RGB where grayscale is expected (and back) is converted.
    11. Mini-ImageNet CSV naming a missing image.
    12. truncated Omniglot zip.
Checkpoints
    13. a checkpoint of another method or architecture as ``ckpt_path`` (test or resume).
    E4. a missing or truncated checkpoint file.
Training
    14. NaN loss during meta-training: stops with a message; the last good checkpoint is kept.
    15. NaN loss with ``nonfinite_loss=skip``: warned, counted, skipped; the run completes.
Reports and evaluation
    16. a report over a folder without runs: exit status 2 and a message.
    17. ``eval.shots`` larger than ``data.n_shot``.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf.errors import MissingMandatoryValue

import fewshot
from fewshot.data.errors import DataError
from fewshot.data.folder import ImageFolder
from fewshot.methods.base import EpisodicMethod, NonFiniteLossError
from fewshot.reporting.build import main as report_main
from fewshot.run.checkpoint import checkpoint_config
from fewshot.run.training import train
from tests.conftest import PROJECT_ROOT, compose_config
from tests.data.fakes import (
    make_image_folder,
    make_mini_imagenet,
    omniglot_files,
    random_image,
    write_zip,
)

# every run is a few episodes of the tiny embedded dataset on the CPU, without loggers
TINY = ["debug=tiny", "trainer=cpu", "logger=none", "trainer.enable_progress_bar=false"]
FEW_EPISODES = ["data.train_episodes=2", "data.val_episodes=2", "data.test_episodes=2"]
FAKE_ALPHABETS = {"Greek": 3, "Latin": 2, "Korean": 2, "Tagalog": 2, "Early_Aramaic": 2}


def raises_with(error_type: type[BaseException], call: Callable[[], object], *phrases: str) -> BaseException:
    """Run ``call``, expect ``error_type`` (also as the cause Hydra wraps into an
    InstantiationException when a constructor refuses its arguments) with every phrase in its
    message; return the error."""
    with pytest.raises((error_type, InstantiationException)) as caught:
        call()
    error = caught.value
    if isinstance(error, InstantiationException) and not issubclass(error_type, InstantiationException):
        assert isinstance(error.__cause__, error_type), f"{type(error.__cause__).__name__}: {error.__cause__}"
    message = str(error)
    for phrase in phrases:
        assert phrase in message, f"{phrase!r} not in: {message}"
    return error


def run_train_py(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python train.py args`` as a user runs it (fails at composition, before importing torch)."""
    return subprocess.run(
        [sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def grayscale_folder(root: Path, n_classes: int = 10, images: int = 3) -> Path:
    """A user's folder dataset ``root/c00 .. c09`` of 16x16 grayscale PNGs."""
    return make_image_folder(root, [f"c{i:02d}" for i in range(n_classes)], images=images, mode="L", size=(16, 16))


def folder_run(tiny_config, root: Path, *overrides: str):
    """The tiny config on a grayscale folder dataset at ``root``."""
    return tiny_config("data=folder", f"data.source.root={root}", "data.channels=1", "data.image_size=16", *overrides)


def omniglot_run(tiny_config, root: Path, *overrides: str):
    """The tiny config on the Omniglot data at ``root``."""
    return tiny_config("data=omniglot", f"data.source.root={root}", *overrides)


# --- configuration ---------------------------------------------------------------------------


def test_1_unknown_config_group_option_lists_the_available_options(tmp_path):
    out = run_train_py("model=nosuch", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode != 0
    assert "Could not find 'model/nosuch'" in out.stderr
    assert "Available options in 'model'" in out.stderr and "protonet" in out.stderr and "maml" in out.stderr


def test_2_unknown_config_key_is_named_with_the_append_form(tmp_path):
    out = run_train_py("data.n_wya=5", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode != 0
    assert "Could not override 'data.n_wya'" in out.stderr and "Key 'n_wya' is not in struct" in out.stderr
    assert "+data.n_wya=5" in out.stderr


@pytest.mark.parametrize(
    ("override", "problem", "fix"),
    [
        ("data.n_way=0", "n_way must be a positive integer, got 0", "set data.n_way >= 1"),
        ("data.n_shot=-1", "n_shot must be a positive integer, got -1", "set data.n_shot >= 1"),
        ("data.n_query=0", "n_query must be a positive integer, got 0", "set data.n_query >= 1"),
        ("data.n_way=1", "n_way must be at least 2", "set data.n_way >= 2"),
        # used to fall back to data.n_way silently (``0 or n_way``)
        ("data.train_n_way=0", "data.train_n_way must be a positive integer", "or null for data.n_way=5"),
        ("data.train_n_shot=-2", "data.train_n_shot must be a positive integer", "or null for data.n_shot=1"),
    ],
)
def test_3_non_positive_episode_sizes_are_refused(tiny_config, override, problem, fix):
    raises_with(DataError, lambda: train(tiny_config(override)), problem, fix)


def test_e1_folder_dataset_without_a_root_names_the_missing_key(tiny_config):
    raises_with(
        MissingMandatoryValue, lambda: train(tiny_config("data=folder")), "Missing mandatory value: data.source.root"
    )


@pytest.mark.parametrize(
    ("override", "error_type", "problem", "fix"),
    [
        ("data.meta_batch_size=0", DataError, "data.meta_batch_size must be a positive number", "set it >= 1"),
        ("callbacks.cpu_budget.minutes=-1", ValueError, "minutes must be positive", "or null for no budget"),
        ("nonfinite_loss=explode", ValueError, "nonfinite_loss must be one of ['stop', 'skip']", "nonfinite_loss=stop"),
        ("data.channels=3", DataError, "images have shape (1, 28, 28)", "set data.channels and data.image_size"),
    ],
)
def test_e2_bad_run_settings_are_refused(tiny_config, override, error_type, problem, fix):
    raises_with(error_type, lambda: train(tiny_config(override)), problem, fix)


@pytest.mark.parametrize("model", ["maml", "reptile"])
@pytest.mark.parametrize(
    ("override", "got"), [("model.inner_steps=0", "got 0 and"), ("model.eval_inner_steps=-1", "and -1")]
)
def test_e2_inner_step_counts_out_of_range_are_refused(tiny_config, model, override, got):
    raises_with(
        ValueError,
        lambda: train(tiny_config(f"model={model}", override)),
        "model.inner_steps must be >= 1 and model.eval_inner_steps >= 0",
        got,
    )


def test_e3_unknown_omniglot_split_mode_or_alphabet_is_refused(tiny_config, tmp_path):
    root = write_zip(tmp_path / "omniglot" / "images_background.zip", omniglot_files(FAKE_ALPHABETS)).parent
    raises_with(
        DataError,
        lambda: train(omniglot_run(tiny_config, root, "data.source.split=drawer")),
        "Omniglot split must be one of ('alphabet', 'character'), got 'drawer'",
        "set data.source.split=alphabet",
    )
    raises_with(
        DataError,
        lambda: train(omniglot_run(tiny_config, root, "data.source.val_alphabets=[Klingon]")),
        "Unknown Omniglot alphabets ['Klingon']",
        "'Greek'",  # the alphabets that are there
        "Fix data.source.train_alphabets / val_alphabets / test_alphabets",
    )


# --- data ------------------------------------------------------------------------------------


def test_4_n_way_larger_than_the_classes_of_a_split(tiny_config):
    raises_with(
        DataError,
        lambda: train(tiny_config("data.n_way=11")),
        "n_way=11 is larger than the 10 classes of the 'val' split",
        "lower n_way to at most 10",
    )


def test_5_shots_plus_queries_larger_than_the_images_of_a_class(tiny_config):
    raises_with(
        DataError,
        lambda: train(tiny_config("data.n_shot=6", "data.n_query=5")),
        "n_shot + n_query = 6 + 5 = 11 is larger than the 10 images of class",
        "lower n_shot or n_query so that their sum is at most 10",
    )


def test_6_missing_data_root(tiny_config, tmp_path):
    raises_with(
        DataError,
        lambda: train(omniglot_run(tiny_config, tmp_path / "no_omniglot")),
        f"Omniglot root {tmp_path / 'no_omniglot'} not found",
        "set data.source.root to the folder holding the Omniglot zips",
    )
    raises_with(
        DataError,
        lambda: train(folder_run(tiny_config, tmp_path / "no_images")),
        f"Image folder {tmp_path / 'no_images'} not found",
        "set data.source.root to a folder holding one sub-folder of images per class",
    )


def test_7_empty_class_folder_is_named(tiny_config, tmp_path):
    root = grayscale_folder(tmp_path / "images")
    (root / "c10").mkdir()
    raises_with(
        DataError,
        lambda: train(folder_run(tiny_config, root)),
        f"Class folder {root / 'c10'} is empty",
        "remove it or add its images",
    )


def test_8_corrupt_image_is_named(tiny_config, tmp_path):
    root = grayscale_folder(tmp_path / "images")
    (root / "c03" / "img1.png").write_bytes(b"not a png at all" * 10)
    raises_with(
        DataError,
        lambda: train(folder_run(tiny_config, root)),
        f"Cannot decode image {root / 'c03' / 'img1.png'}",
        "corrupt, truncated or not an image; replace or delete it",
    )


def test_9_non_image_file_among_images_is_an_error(tiny_config, tmp_path):
    root = grayscale_folder(tmp_path / "images")
    (root / "c05" / "notes.txt").write_text("labelled by Ann")
    raises_with(
        DataError,
        lambda: train(folder_run(tiny_config, root)),
        f"{root / 'c05' / 'notes.txt'} is not an image",
        "delete or move it",
    )


def test_9_os_junk_among_images_is_skipped(tmp_path):
    root = grayscale_folder(tmp_path / "images")
    for junk in (".DS_Store", "Thumbs.db", "._img0.png"):
        (root / "c05" / junk).write_bytes(b"\x00\x01junk")
    splits = ImageFolder(root, channels=1, image_size=16, split_fractions=(0.6, 0.2, 0.2), workers=1).load()
    counts = {n: c for s in splits.values() for n, c in zip(s.names, s.counts, strict=True)}
    assert counts["c05"] == 3 and len(counts) == 10


def test_10_rgb_where_grayscale_is_expected_is_converted_not_crashed(tmp_path):
    root = make_image_folder(tmp_path / "rgb", [f"c{i}" for i in range(10)], images=2, mode="RGB", size=(20, 12))
    splits = ImageFolder(root, channels=1, image_size=16, split_fractions=(0.6, 0.2, 0.2), workers=1).load()
    for split in splits.values():
        assert split.image_shape == (1, 16, 16)


def test_10_grayscale_and_mixed_modes_where_rgb_is_expected_are_converted(tmp_path):
    root = grayscale_folder(tmp_path / "mixed")
    rng = np.random.default_rng(0)
    random_image(rng, (16, 16), "RGB").convert("RGBA").save(root / "c00" / "rgba.png")
    random_image(rng, (16, 16), "RGB").convert("P").save(root / "c01" / "palette.png")
    splits = ImageFolder(root, channels=3, image_size=16, split_fractions=(0.6, 0.2, 0.2), workers=1).load()
    images = {n: t for s in splits.values() for n, t in zip(s.names, s.images, strict=True)}
    assert all(t.shape[1:] == (3, 16, 16) for t in images.values())
    gray = images["c02"]
    assert torch.equal(gray[:, 0], gray[:, 1]) and torch.equal(gray[:, 1], gray[:, 2])  # replicated, not made up


def test_11_mini_imagenet_csv_naming_a_missing_file(tiny_config, tmp_path):
    root = make_mini_imagenet(tmp_path / "mini", sizes=((24, 24),))
    (root / "images" / "n0155899300000002.jpg").unlink()  # the second class's second image: line 7
    cfg = tiny_config("data=miniimagenet", f"data.source.root={root}", "data.source.cache=false", "data.image_size=16")
    raises_with(
        DataError,
        lambda: train(cfg),
        f"{root / 'train.csv'} line 7 names n0155899300000002.jpg, but",
        "does not exist; restore the image",
    )


def test_12_truncated_omniglot_zip(tiny_config, tmp_path):
    archive = write_zip(tmp_path / "omniglot" / "images_background.zip", omniglot_files(FAKE_ALPHABETS))
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    raises_with(
        DataError,
        lambda: train(omniglot_run(tiny_config, archive.parent)),
        f"{archive} is not a readable zip file",
        "truncated or corrupt; re-download it",
    )


# --- checkpoints -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def protonet_hidden8(tmp_path_factory) -> Path:
    """The best checkpoint of a tiny ProtoNet run with a Conv-4 of 8 channels."""
    out = tmp_path_factory.mktemp("protonet_hidden8")
    results = train(compose_config([*TINY, *FEW_EPISODES, "model.backbone.hidden=8"], out))
    return Path(results["checkpoint"])


def test_13_the_matching_config_tests_the_checkpoint(protonet_hidden8, tmp_path):
    overrides = [*TINY, *FEW_EPISODES, "model.backbone.hidden=8", "train=false", f"ckpt_path={protonet_hidden8}"]
    results = train(compose_config(overrides, tmp_path))
    assert results["checkpoint"] == str(protonet_hidden8) and results["test"]["episodes"] == 2


def test_13_checkpoint_of_another_method_names_both_and_the_fix(protonet_hidden8, tmp_path):
    overrides = [*TINY, *FEW_EPISODES, "model=maml", "train=false", f"ckpt_path={protonet_hidden8}"]
    raises_with(
        ValueError,
        lambda: train(compose_config(overrides, tmp_path)),
        "holds a fewshot.methods.protonet.ProtoNet but the config builds a fewshot.methods.maml.MAML",
        "Pass the model=/experiment= settings the checkpoint was trained with",
    )


@pytest.mark.parametrize("training", ["false", "true"], ids=["test", "resume"])
def test_13_checkpoint_of_another_architecture_names_both_shapes_and_the_fix(protonet_hidden8, tmp_path, training):
    overrides = [*TINY, *FEW_EPISODES, "model.backbone.hidden=16", f"train={training}", f"ckpt_path={protonet_hidden8}"]
    error = raises_with(
        ValueError,
        lambda: train(compose_config(overrides, tmp_path)),
        "does not fit the configured fewshot.methods.protonet.ProtoNet",
        "backbone.features.0.0.weight has shape [8, 1, 3, 3] in the checkpoint but [16, 1, 3, 3] in the method",
        "model.backbone.hidden: 8 (checkpoint) vs 16 (config)",
        "Pass the model=/experiment= settings the checkpoint was trained with",
    )
    assert "size mismatch" not in str(error)  # not PyTorch's raw dump
    assert checkpoint_config(protonet_hidden8).model.backbone.hidden == 8  # what the message points to


def test_e4_missing_or_truncated_checkpoint_file(protonet_hidden8, tmp_path):
    missing = tmp_path / "nosuch.ckpt"
    overrides = [*TINY, *FEW_EPISODES, "train=false", f"ckpt_path={missing}"]
    raises_with(
        FileNotFoundError,
        lambda: train(compose_config(overrides, tmp_path)),
        f"Checkpoint {missing} not found",
        "pass the path of a .ckpt written by train.py",
    )
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(protonet_hidden8.read_bytes()[:2000])
    raises_with(ValueError, lambda: fewshot.load(truncated), f"Cannot read checkpoint {truncated}", "corrupt")


# --- training --------------------------------------------------------------------------------


def poison_losses(monkeypatch, bad_calls: set[int]) -> list[EpisodicMethod]:
    """Make the meta-training loss NaN on the ``bad_calls``-th training steps (counted from 0);
    return a list that will hold the method being trained."""
    original = EpisodicMethod.episode_loss
    seen: list[EpisodicMethod] = []

    def episode_loss(self, episode):
        seen.append(self)
        loss, logits = original(self, episode)
        return (loss * math.nan if len(seen) - 1 in bad_calls else loss), logits

    monkeypatch.setattr(EpisodicMethod, "episode_loss", episode_loss)
    return seen


def test_14_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    poison_losses(monkeypatch, bad_calls=set(range(2, 100)))  # epoch 0 is steps 0 and 1
    cfg = tiny_config("callbacks=default", "trainer.max_epochs=3", *FEW_EPISODES, "model.backbone.hidden=8")
    raises_with(
        NonFiniteLossError,
        lambda: train(cfg),
        "Non-finite training loss (nan) at step 2; training stopped",
        "Lower the learning rate (model.optimizer.lr)",
        "set nonfinite_loss=skip",
    )
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 0
    method = fewshot.load(last)
    assert all(torch.isfinite(p).all() for p in method.parameters())


def test_15_nan_loss_with_skip_warns_counts_and_completes(tiny_config, tmp_path, monkeypatch):
    seen = poison_losses(monkeypatch, bad_calls={1, 2})
    cfg = tiny_config(
        "nonfinite_loss=skip", "logger=csv", "trainer.max_epochs=2", *FEW_EPISODES, "model.backbone.hidden=8"
    )
    with pytest.warns(UserWarning, match=r"Non-finite training loss \(nan\) at step \d+: skipping the update"):
        results = train(cfg)
    assert seen[0].nonfinite.skipped == 2 and results["train"]["skipped_nonfinite"] == 2
    assert results["test"]["episodes"] == 2
    method = fewshot.load(results["checkpoint"])
    assert all(torch.isfinite(p).all() for p in method.parameters())  # no update from a NaN loss
    with (tmp_path / "csv" / "metrics.csv").open() as f:
        logged = [float(row["train/skipped_nonfinite"]) for row in csv.DictReader(f) if row["train/skipped_nonfinite"]]
    assert logged[0] == 1.0 and max(logged) == 2.0  # the running count


def test_15_skip_is_refused_for_methods_with_their_own_training_step(tiny_config):
    raises_with(
        ValueError,
        lambda: train(tiny_config("model=reptile", "nonfinite_loss=skip")),
        "nonfinite_loss=skip needs the shared episodic training step, but Reptile trains with its own",
        "set nonfinite_loss=stop",
    )


# --- reports and evaluation ------------------------------------------------------------------


def test_16_report_over_a_folder_without_runs_exits_2(tmp_path, capsys):
    empty = tmp_path / "runs"
    empty.mkdir()
    assert report_main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"No results.json under {empty}: these folders hold no finished runs" in err
    assert "Pass the folder that train.py printed" in err


def test_17_eval_shots_larger_than_the_episodes_shots(tiny_config):
    raises_with(
        ValueError,
        lambda: train(tiny_config("eval.shots=[1,5]")),
        "eval.shots=[1, 5] asks for 5 shots but test episodes have data.n_shot=1",
        "set data.n_shot=5",
    )
